"""CUDA graphs of the frozen mode (resnet_ext.engine.cuda, `freeze(model, cuda_graphs=True)`): the host-side logic on
the CPU (when a forward may replay, the cache, the switch, invalidation, pickling); replay against eager on CUDA."""
import copy
import pickle

import pytest
import torch
from torch import nn

import resnet_ext
from resnet_ext.engine import cuda, state
from conftest import randomize_bn, rel_err, requires_cuda, tv_model


def frozen_model(cuda_graphs=True, device="cpu", dtype=torch.float32):
    torch.manual_seed(0)
    model = randomize_bn(resnet_ext.resnet18(num_classes=10)).to(device, dtype)
    return resnet_ext.freeze(model, cuda_graphs=cuda_graphs)


# ------------------------------------------------------------------------------------------------------------
# Host side (CPU)
# ------------------------------------------------------------------------------------------------------------

def test_eager_reason_names_each_precondition():
    model = frozen_model()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert cuda.eager_reason(model, x) == "not a CUDA input"  # every check before the device passes
        assert cuda.eager_reason(model, x.double()).startswith("hooks, swapped modules or an input")
        assert cuda.eager_reason(model, torch.randn(2, 5, 32, 32)).startswith("hooks, swapped modules")
        h = model.layer2[0].conv1.register_forward_hook(lambda m, a, o: None)
        assert cuda.eager_reason(model, x).startswith("hooks, swapped modules")
        h.remove()
        model.layer1[0].relu = nn.ReLU6()
        assert cuda.eager_reason(model, x).startswith("hooks, swapped modules")
        model.layer1[0].relu = nn.ReLU(inplace=True)
        model.fc = nn.Sequential(nn.Dropout(0.5), nn.Linear(512, 10))  # its Python would not rerun on a replay
        assert cuda.eager_reason(model, x) == "an fc other than nn.Linear"
    assert cuda.eager_reason(model, x) == "gradients may be needed"  # grad mode, parameters that want grads


def test_cache_keeps_the_most_recent_signatures():
    cache = cuda.GraphCache()
    for i in range(cuda.LIMIT + 3):
        cache.put((i,), f"entry {i}")
    assert len(cache.entries) == cuda.LIMIT
    assert cache.get((0,)) is None and cache.get((3,)) == "entry 3"
    cache.put((99,), "new")  # 3 was used last: 4 is the oldest now
    assert cache.get((4,)) is None and cache.get((3,)) == "entry 3"
    a, b = torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    assert cuda.signature(a) != cuda.signature(b) != cuda.signature(a.half())
    assert cuda.signature(a) == cuda.signature(torch.randn(1, 3, 8, 8))


def test_switch_invalidation_and_pickling():
    model = frozen_model()
    st = state.of(model)
    assert st.cuda_graphs and resnet_ext.is_frozen(model)
    with pytest.raises(TypeError, match="cuda_graphs must be True or False"):
        resnet_ext.freeze(model, cuda_graphs="yes")
    for change in (lambda m: m.float(), lambda m: m.load_state_dict(m.state_dict()), lambda m: m.train().eval(),
                   lambda m: resnet_ext.freeze(m, cuda_graphs=True)):
        st.graphs = cuda.GraphCache()  # stands for captured graphs, which hold the folds' memory
        change(model)
        assert st.graphs is None  # whatever drops the folds drops the graphs
    again = pickle.loads(pickle.dumps(model))
    assert state.of(again).cuda_graphs and state.of(again).graphs is None
    assert state.of(copy.deepcopy(model)).cuda_graphs
    resnet_ext.freeze(model)  # the default: no graphs
    assert not state.of(model).cuda_graphs
    resnet_ext.freeze(model, cuda_graphs=True)
    resnet_ext.unfreeze(model)
    assert not state.of(model).cuda_graphs


def test_cpu_model_with_graphs_on_runs_the_flat_forward():
    model = frozen_model()
    tv = model.to_torchvision().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        resnet_ext.reset_path_counts()
        y = model(x)
        counts = resnet_ext.path_counts()
        assert rel_err(y, tv(x)) < 1e-4
    assert counts.get("flat_forwards") == 1 and "cuda_graph_captures" not in counts


# ------------------------------------------------------------------------------------------------------------
# CUDA
# ------------------------------------------------------------------------------------------------------------

def _counts(fn):
    resnet_ext.reset_path_counts()
    out = fn()
    torch.cuda.synchronize()
    return out, resnet_ext.path_counts()


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_replay_equals_eager_for_every_signature(dtype):
    torch.manual_seed(0)
    base = randomize_bn(resnet_ext.resnet50(num_classes=10)).cuda().to(dtype).to(memory_format=torch.channels_last)
    eager = resnet_ext.freeze(copy.deepcopy(base))
    graphed = resnet_ext.freeze(base, cuda_graphs=True)
    with torch.no_grad():
        for n, size, cl in ((1, 224, True), (8, 96, True), (32, 64, True), (3, 57, False), (1, 224, True)):
            x = torch.randn(n, 3, size, size, device="cuda", dtype=dtype)
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            ref = eager(x)
            for call in range(3):  # capture (first call of the signature), then replays
                x.copy_(torch.randn_like(x))
                ref = eager(x)
                y, counts = _counts(lambda: graphed(x))
                assert torch.isfinite(y).all()
                assert torch.equal(y, ref), (n, size, cl, call, rel_err(y, ref))
                assert counts.get("cuda_graph_replays") == 1, counts
    st = state.of(graphed)
    assert len(st.graphs.entries) == 4 and all(isinstance(e, cuda.Graph) for e in st.graphs.entries.values())


@requires_cuda
def test_outputs_are_the_callers_and_freeze_again_recaptures():
    model = frozen_model(device="cuda")
    x1, x2 = (torch.randn(4, 3, 64, 64, device="cuda") for _ in range(2))
    with torch.no_grad():
        y1 = model(x1)
        y1_copy = y1.clone()
        y2 = model(x2)
        assert torch.equal(y1, y1_copy) and not torch.equal(y1, y2)  # the second replay did not overwrite y1
        for p in model.parameters():
            p.mul_(1.1)
        resnet_ext.freeze(model, cuda_graphs=True)
        tv = model.to_torchvision().eval()
        _, counts = _counts(lambda: model(x1))
        assert counts.get("cuda_graph_captures") == 1  # the new folds: a new capture
        assert rel_err(model(x1), tv(x1)) < 1e-2


def _sgd_step_in_eval(m):
    """One optimizer step taken in eval mode (a forward with gradients runs unfrozen), as when fine-tuning with BN
    frozen."""
    with torch.enable_grad():
        x = torch.randn(2, 3, 64, 64, device=next(m.parameters()).device)
        m(x).square().mean().backward()
    torch.optim.SGD(m.parameters(), lr=0.5).step()
    m.zero_grad(set_to_none=True)


CUDA_WRITES = {
    "mul_": lambda m: [p.mul_(1.1) for p in m.parameters()],
    "running_var_fill_": lambda m: m.layer2[0].bn1.running_var.fill_(0.05),
    "data_assigned": lambda m: setattr(m.layer1[0].conv1.weight, "data", m.layer1[0].conv1.weight.data * -1),
    "sgd_step_in_eval": _sgd_step_in_eval,
}


@requires_cuda
@pytest.mark.parametrize("cuda_graphs", [False, True], ids=["eager", "graphs"])
@pytest.mark.parametrize("write", list(CUDA_WRITES))
def test_writes_into_folded_cuda_tensors_refold_without_freeze_again(cuda_graphs, write):
    """`_C.FoldSources` on CUDA tensors: after frozen forwards (graph replays where graphs are on), a write into a
    folded tensor changes the output as it changes torchvision's, with no second `freeze`; with graphs, the new
    folds are captured anew (the old graph held the old folds)."""
    model = frozen_model(cuda_graphs=cuda_graphs, device="cuda")
    tv = model.to_torchvision().eval()  # the same parameter and buffer objects
    x = torch.randn(2, 3, 64, 64, device="cuda")
    with torch.no_grad():
        model(x), model(x)
        before = tv(x)
        CUDA_WRITES[write](model)
        ref = tv(x)
        assert rel_err(ref, before) > 5e-2  # the write matters: a stale fold would fail below
        y, counts = _counts(lambda: model(x))
        assert rel_err(y, ref) < 1e-2, rel_err(y, ref)
        if cuda_graphs:
            assert counts.get("cuda_graph_captures") == 1, counts
            y2, counts = _counts(lambda: model(x))
            assert counts.get("cuda_graph_replays") == 1 and torch.equal(y2, y), counts


@requires_cuda
def test_captured_under_inference_mode_replays_outside_it():
    model = frozen_model(device="cuda")
    x = torch.randn(2, 3, 64, 64, device="cuda")
    with torch.inference_mode():
        y0 = model(x)
    with torch.no_grad():
        y1, counts = _counts(lambda: model(x))
    assert counts.get("cuda_graph_replays") == 1 and torch.equal(y0, y1)
    with torch.inference_mode():
        assert torch.equal(model(x), y0)


@requires_cuda
def test_two_models_do_not_interfere_and_eager_where_required():
    a, b = frozen_model(device="cuda"), frozen_model(device="cuda")
    with torch.no_grad():
        for p in b.parameters():
            p.mul_(0.9)
        resnet_ext.freeze(b, cuda_graphs=True)
        x = torch.randn(2, 3, 64, 64, device="cuda")
        ya, yb = a(x), b(x)
        assert torch.equal(a(x), ya) and torch.equal(b(x), yb) and not torch.equal(ya, yb)
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            _, counts = _counts(lambda: a(x))
        assert "cuda_graph_replays" not in counts  # a non-default stream runs eagerly
        h = a.layer1[0].register_forward_hook(lambda m, i, o: o * 2)
        y, counts = _counts(lambda: a(x))
        assert "cuda_graph_replays" not in counts and not torch.equal(y, ya)  # the hook ran
        h.remove()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            assert cuda.eager_reason(a, x) == "autocast"
        assert cuda.eager_reason(a, x) is None
    y, counts = _counts(lambda: a(x))  # grad mode: eager
    assert "cuda_graph_replays" not in counts


@requires_cuda
def test_the_small_image_stem_on_cuda():
    """The small-image variant (3x3 stride-1 stem conv, nn.Identity max pool) runs the flat forward on CUDA too:
    the default mode, the frozen mode eager and as CUDA graphs, and `on_cuda(True)`; torchvision's answer in fp32
    (TF32 off), the replay equal to the frozen eager forward."""
    torch.manual_seed(0)
    tv = randomize_bn(tv_model("resnet18", num_classes=10))
    tv.conv1, tv.maxpool = nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.Identity()
    tv = tv.eval().cuda()
    ours = resnet_ext.from_torchvision(copy.deepcopy(tv))
    eager = resnet_ext.freeze(copy.deepcopy(ours))
    graphed = resnet_ext.freeze(copy.deepcopy(ours), cuda_graphs=True)
    x = torch.randn(4, 3, 32, 32, device="cuda")
    tf32, torch.backends.cuda.matmul.allow_tf32 = torch.backends.cuda.matmul.allow_tf32, False
    try:
        _small_stem_on_cuda(tv, ours, eager, graphed, x)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


def _small_stem_on_cuda(tv, ours, eager, graphed, x):
    with torch.no_grad(), torch.backends.cudnn.flags(allow_tf32=False):
        ref = tv(x)
        assert rel_err(ours(x), ref) < 1e-4 and rel_err(eager(x), ref) < 1e-4
        prev = resnet_ext.switches.on_cuda(True)
        try:
            assert rel_err(ours(x), ref) < 1e-4
        finally:
            resnet_ext.switches.on_cuda(prev)
        for _ in range(3):
            y, counts = _counts(lambda: graphed(x))
            assert torch.equal(y, eager(x)), rel_err(y, eager(x))
        assert counts.get("cuda_graph_replays") == 1, counts
