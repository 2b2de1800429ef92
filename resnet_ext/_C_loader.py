"""Imports the compiled extension and refuses a torch it was not built against (a mismatched torch either fails
to load the library or, worse, loads it with a different ABI)."""
import glob
import importlib.machinery
import importlib.util
import os
import sys

import torch

_REBUILD = ("rebuild resnet_ext against the installed torch: "
            "`pip install --no-build-isolation --force-reinstall --no-deps .` from the resnet_ext source tree")


def _installed_extension():
    """Run from a source checkout after a plain `pip install .`, the checkout's resnet_ext/ (without _C) shadows
    the installed package: use the extension that pip installed from this same source."""
    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        pkg = os.path.join(entry or ".", "resnet_ext")
        if os.path.abspath(pkg) == here:
            continue
        for path in sorted(glob.glob(os.path.join(pkg, "_C.*.so")) + glob.glob(os.path.join(pkg, "_C.*.pyd"))):
            loader = importlib.machinery.ExtensionFileLoader("resnet_ext._C", path)
            spec = importlib.util.spec_from_file_location("resnet_ext._C", path, loader=loader)
            module = importlib.util.module_from_spec(spec)
            loader.exec_module(module)
            sys.modules["resnet_ext._C"] = module
            return module
    return None


try:
    from . import _C  # noqa: F401  (registers the resnet_ext:: ops with the dispatcher)
except ImportError as e:
    _here = os.path.dirname(os.path.abspath(__file__))
    _C = None if glob.glob(os.path.join(_here, "_C.*")) else _installed_extension()
    if _C is None:  # undefined symbols when torch changed underneath, or never built
        raise ImportError(f"resnet_ext._C could not be loaded with torch {torch.__version__} ({e}); "
                          f"{_REBUILD}") from e

_built = _C.build_info()["torch_version"]
if _built != torch.__version__:
    raise ImportError(f"resnet_ext was built against torch {_built} but torch {torch.__version__} is installed; "
                      f"{_REBUILD}")
