"""The frozen CPU mode as one oneDNN Graph per input shape (`switches.cpu_onednn_graph`, engine/onednn_graph.py):
torchvision's answers on every block type and odd shapes, the per-unit plan wherever the graph does not apply or
cannot be made, TorchScript's fuser setting left as it was, and the live parts of the forward (max pool
parameters, the fc) never baked into a graph. Each graph made here stays in the process (TorchScript keeps them):
small models only."""
import copy

import pytest
import torch

import resnet_ext
from resnet_ext import switches
from resnet_ext.engine import onednn_graph, units
from conftest import randomize_bn, rel_err, tv_model

TOL = 1e-4
needs_graph = pytest.mark.skipif(not onednn_graph.supported(), reason="this torch has no oneDNN Graph fuser")
bf16_only = pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="no native bf16 on this CPU")


@pytest.fixture
def graph_on():
    was = switches.cpu_onednn_graph(True)
    yield
    switches.cpu_onednn_graph(was)


def frozen_pair(arch="resnet18", dtype=None, **kw):
    tv = randomize_bn(tv_model(arch, num_classes=10, **kw)).eval()
    return resnet_ext.freeze(resnet_ext.from_torchvision(tv), dtype=dtype), tv


def run(model, x):
    units.reset_path_counts()
    with torch.no_grad():
        y = model(x)
    return y, resnet_ext.path_counts()


@needs_graph
@pytest.mark.parametrize("arch, kw, shape, layout", [
    ("resnet18", {}, (1, 3, 64, 64), "channels_last"),
    ("resnet18", {}, (3, 3, 37, 45), "nchw"),          # odd sizes, batch 3, layer 4 down to 2x2
    ("resnet50", {}, (1, 3, 32, 32), "nchw"),          # layer 4's 1x1 map
    ("resnext50_32x4d", {}, (2, 3, 48, 40), "channels_last"),  # grouped 3x3 convs
    ("resnet18", {"replace_stride_with_dilation": [False, False, False]}, (1, 3, 40, 40), "channels_last"),
])
def test_graph_gives_torchvisions_answer(graph_on, arch, kw, shape, layout):
    ours, tv = frozen_pair(arch, **kw)
    x = torch.randn(*shape)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = tv(x)
    for _ in range(2):  # build, then the kept graph
        y, counts = run(ours, x)
        # the head after the graph: one op where this CPU runs its loops (engine.cpu.head_fits)
        assert counts.pop("pool_linear", 0) == int(resnet_ext.ops.pool_linear_supported()), counts
        assert counts == {"onednn_graph": 1, "flat_forwards": 1}, counts
        assert y.dtype == torch.float32 and rel_err(y, ref) < TOL, rel_err(y, ref)


@needs_graph
@bf16_only
def test_bf16_graph_is_as_close_to_float64_as_the_per_unit_plan(graph_on):
    torch.manual_seed(0)
    ours, tv = frozen_pair("resnet18", dtype=torch.bfloat16)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = copy.deepcopy(tv).double()(x.double())
        tv_err = rel_err(copy.deepcopy(tv).bfloat16()(x.bfloat16()), ref)
    errs = {}
    for on in (False, True):
        switches.cpu_onednn_graph(on)
        y, counts = run(ours, x)
        assert ("onednn_graph" in counts) == on and y.dtype == torch.float32, counts
        errs[on] = rel_err(y, ref)
    assert errs[True] <= 1.5 * errs[False] and errs[True] <= 2 * tv_err, (errs, tv_err)


@needs_graph
def test_fp32_above_the_pixel_bound_runs_the_per_unit_plan(graph_on, monkeypatch):
    ours, tv = frozen_pair()
    x = torch.randn(2, 3, 32, 32)
    monkeypatch.setattr(onednn_graph, "FP32_PIXELS", 2 * 32 * 32)  # not below: the plan
    y, counts = run(ours, x)
    assert "onednn_graph" not in counts and counts.get("onednn_prepacked", 0) > 0, counts
    with torch.no_grad():
        assert rel_err(y, tv(x)) < TOL


def test_off_by_default_and_the_switch_picks_the_path_per_call():
    assert switches.cpu_onednn_graph() is False
    ours, tv = frozen_pair()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = tv(x)
    for on in (False, True, False, True):
        was = switches.cpu_onednn_graph(on)
        try:
            y, counts = run(ours, x)
        finally:
            switches.cpu_onednn_graph(was)
        assert ("onednn_graph" in counts) == (on and onednn_graph.supported()), counts
        assert rel_err(y, ref) < TOL


@needs_graph
@pytest.mark.parametrize("initially", [False, True])
def test_torchscripts_fuser_setting_is_left_as_it_was(graph_on, initially):
    was = torch.jit.onednn_fusion_enabled()
    torch.jit.enable_onednn_fusion(initially)
    try:
        ours, _ = frozen_pair()
        _, counts = run(ours, torch.randn(1, 3, 40, 40))
        assert "onednn_graph" in counts
        assert torch.jit.onednn_fusion_enabled() is initially
    finally:
        torch.jit.enable_onednn_fusion(was)


def test_where_no_graph_can_be_made_the_per_unit_plan_runs(graph_on, monkeypatch):
    ours, tv = frozen_pair()
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        ref = tv(x)
    monkeypatch.setattr(onednn_graph, "supported", lambda: False)  # a torch without the route
    y, counts = run(ours, x)
    assert "onednn_graph" not in counts and counts.get("onednn_prepacked", 0) > 0, counts
    assert rel_err(y, ref) < TOL


@needs_graph
def test_a_graph_the_fuser_did_not_take_is_not_used(graph_on):
    """With TorchScript's profiling executor off the fuser never sees the graph: no partitions, so the plan."""
    ours, tv = frozen_pair()
    x = torch.randn(1, 3, 56, 56)
    was = torch._C._jit_set_profiling_executor(False)
    try:
        y, counts = run(ours, x)
    finally:
        torch._C._jit_set_profiling_executor(was)
    assert "onednn_graph" not in counts and counts.get("onednn_prepacked", 0) > 0, counts
    with torch.no_grad():
        assert rel_err(y, tv(x)) < TOL


@needs_graph
def test_max_pool_and_fc_stay_live(graph_on):
    """The per-unit plan reads the max pool's parameters and the fc on every call; a graph made before they
    changed must not answer for them."""
    ours, tv = frozen_pair()
    x = torch.randn(1, 3, 64, 64)
    run(ours, x)
    for m in (ours, tv):
        m.maxpool.kernel_size, m.maxpool.padding = 2, 0
        with torch.no_grad():
            m.fc.weight.mul_(-2.0)
    y, counts = run(ours, x)
    assert "onednn_graph" in counts
    with torch.no_grad():
        assert rel_err(y, tv(x)) < TOL
    for m in (ours, tv):
        m.maxpool.return_indices = True
    with pytest.raises(TypeError) as theirs:
        with torch.no_grad():
            tv(x)
    with pytest.raises(TypeError) as mine:
        run(ours, x)
    assert str(mine.value) == str(theirs.value)


@needs_graph
def test_non_finite_inputs_propagate_as_in_torchvision(graph_on):
    ours, tv = frozen_pair()
    x = torch.randn(1, 3, 32, 32)
    x[0, 1, 5, 7] = float("nan")
    with torch.no_grad():
        ref = tv(x)
    y, counts = run(ours, x)
    assert "onednn_graph" not in counts  # the default mode runs such an input
    assert torch.equal(y.isnan(), ref.isnan())
