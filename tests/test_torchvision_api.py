"""What torchvision's own model tests (pytorch/vision test/test_models.py, test_extended_models.py) check of a
builder, asked of resnet_ext's builders (issue #29): isinstance against torchvision's classes, the weights enum
torchvision reads off a builder's annotation, the builders' signatures, and eager vs FX-traced outputs."""
import inspect

import pytest
import torch
import torchvision
from torchvision.models import resnet as tv

import resnet_ext

BUILDERS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d",
            "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2"]


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnext50_32x4d"])
def test_models_and_blocks_are_instances_of_torchvisions_classes(name):
    model = getattr(resnet_ext, name)(num_classes=10)
    assert isinstance(model, torchvision.models.ResNet) and isinstance(model, tv.ResNet)
    block_type = tv.BasicBlock if name == "resnet18" else tv.Bottleneck
    blocks = [b for layer in (model.layer1, model.layer2, model.layer3, model.layer4) for b in layer]
    assert blocks and all(isinstance(b, block_type) for b in blocks)
    assert issubclass(resnet_ext.BasicBlock, tv.BasicBlock) and issubclass(resnet_ext.Bottleneck, tv.Bottleneck)
    # Still our classes, with our forward: the fused path runs.
    assert type(model) is resnet_ext.ResNet and type(model).forward is not tv.ResNet.forward
    resnet_ext.reset_path_counts()
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, 32, 32))
    assert resnet_ext.path_counts().get("flat_forwards") == 1


@pytest.mark.parametrize("name", BUILDERS)
def test_get_model_weights_and_signature_match_torchvisions_builder(name):
    ours, theirs = getattr(resnet_ext, name), torchvision.models.get_model_builder(name)
    enum = torchvision.models.get_model_weights(name)
    assert torchvision.models.get_model_weights(ours) is enum
    assert hasattr(enum, "DEFAULT") and ours.__name__ == name
    ps, pt = inspect.signature(ours).parameters, inspect.signature(theirs).parameters
    assert [(p.name, p.kind, p.default) for p in ps.values()] == [(p.name, p.kind, p.default) for p in pt.values()]
    # torchvision's annotation is Optional[Enum]; ours admits names, paths and state dicts besides.
    assert set(typing_args(pt["weights"].annotation)) <= set(typing_args(ps["weights"].annotation))


def typing_args(annotation):
    import typing

    return typing.get_args(annotation)


def test_weights_entry_of_another_architecture_is_refused():
    with pytest.raises(ValueError, match="weights for another architecture"):
        resnet_ext.resnet18(weights=tv.ResNet50_Weights.IMAGENET1K_V1)
