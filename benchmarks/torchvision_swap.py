"""pytest plugin (`-p torchvision_swap`, on PYTHONPATH): torchvision's ten ResNet builders replaced by resnet_ext's
wherever torchvision's tests look them up (`torchvision.models.<name>`, `torchvision.models.resnet.<name>`, the
registry behind `get_model` / `get_model_builder` / `list_models`), at plugin import, before test collection.

`list_models(module)` keeps the registry entries whose builder's `__module__` is in `module`, so putting a builder
in torchvision's registry means giving it torchvision's module name: the swap sets the ten builders' `__module__`
to `torchvision.models.resnet` for the test process (the package itself keeps `resnet_ext.models`, so that pickling
a builder finds resnet_ext's). RESNET_EXT_SWAP_MODULE=0 leaves them as they are: then they drop out of
`list_models(torchvision.models)` and of the tests parametrized over it (the classification cases are not even
collected), which shows what registering takes and nothing about the models.
"""
import os

import pytest
import torchvision.models
import torchvision.models._api as _api
import torchvision.models.resnet

import resnet_ext
import resnet_ext.models

NAMES = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d",
         "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2"]
SWAP_MODULE = os.environ.get("RESNET_EXT_SWAP_MODULE", "1") == "1"

for _name in NAMES:
    _fn = getattr(resnet_ext, _name)
    if SWAP_MODULE:
        _fn.__module__ = "torchvision.models.resnet"
    setattr(torchvision.models, _name, _fn)
    setattr(torchvision.models.resnet, _name, _fn)
    assert _name in _api.BUILTIN_MODELS, _name
    _api.BUILTIN_MODELS[_name] = _fn


def pytest_report_header(config):
    return [f"torchvision_swap: {len(NAMES)} builders are resnet_ext's ({resnet_ext.__file__}); "
            f"RESNET_EXT_SWAP_MODULE={int(SWAP_MODULE)}"]


@pytest.fixture(autouse=True)
def _the_swap_holds():
    """Every test sees resnet_ext's builders and classes (so a pass is resnet_ext's, not torchvision's)."""
    for name in NAMES:
        assert torchvision.models.__dict__[name] is getattr(resnet_ext, name)
        assert torchvision.models.get_model_builder(name) is getattr(resnet_ext, name)
    assert type(torchvision.models.get_model("resnet18", num_classes=10)) is resnet_ext.models.ResNet
    yield
