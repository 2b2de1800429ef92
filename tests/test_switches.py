"""The run-time switches (resnet_ext/switches.py): one kind of function for all of them, set through the Python API
only; the package reads no environment variable at run time."""
import pathlib
import re

import pytest

import resnet_ext
from resnet_ext import switches

ALL = ["nhwc_max_pool", "on_cuda", "cpu_winograd", "cpu_conv1x1", "cpu_stem", "cpu_direct", "cpu_prefetch",
       "cpu_replay", "bn_optin", "autotune", "prefer_cudnn"]
DEFAULTS = {"cpu_winograd": True, "cpu_conv1x1": True, "cpu_stem": True, "cpu_direct": True, "cpu_prefetch": True,
            "cpu_replay": True, "prefer_cudnn": True}
EXPERIMENTAL_ONLY = {"nhwc_max_pool", "bn_optin"}  # turning them on needs RESNET_EXT_EXPERIMENTAL=1


@pytest.mark.parametrize("name", ALL)
def test_a_switch_tells_sets_and_returns_the_previous_setting(name):
    sw = getattr(switches, name)
    assert sw.__name__ == name and sw.__doc__
    if name != "on_cuda":
        assert getattr(resnet_ext, name) is sw
    start = sw()
    assert start is DEFAULTS.get(name, False) and sw.on is start
    with pytest.raises(TypeError, match=f"{name}: enabled must be True or False"):
        sw(1)
    assert sw() is start
    if name in EXPERIMENTAL_ONLY and not resnet_ext.ops.EXPERIMENTAL:
        with pytest.raises(RuntimeError, match="RESNET_EXT_EXPERIMENTAL=1"):
            sw(True)
        assert sw(False) is False and sw() is False
        return
    if name == "bn_optin" and not resnet_ext.build_info()["cuda"]:
        return  # a CPU build's C++ setting has nothing to act on and stays off
    try:
        assert sw(not start) is start
        assert sw() is (not start) and sw.on is (not start)
    finally:
        assert sw(start) is (not start)
    assert sw() is start


def test_the_package_reads_no_environment_variable():
    root = pathlib.Path(resnet_ext.__file__).parent
    readers = [f"{p.relative_to(root)}:{i}" for p in root.rglob("*.py")
               for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"os\.environ|getenv", line)]
    assert readers == []
