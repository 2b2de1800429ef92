"""The fused training decomposition (`resnet_ext.fused_train`, engine/fused_train.py, #23): each op against its
definition in float64, and train-mode Bottlenecks and whole models against torchvision's (output, every gradient,
running statistics, counters), on the CPU through the ops' ATen compositions and, where a GPU and an experimental
build are present, through cuDNN's graphs."""
import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import resnet_ext
from resnet_ext._C_loader import _C
from resnet_ext.shapes import fused_train_graphs

from conftest import randomize_bn, rel_err, requires_experimental, tv_model

ops = torch.ops.resnet_ext
CL = torch.channels_last

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and resnet_ext.ops.EXPERIMENTAL else [])


@pytest.fixture
def fused_on():
    previous = resnet_ext.fused_train(True)
    resnet_ext.reset_path_counts()
    yield
    resnet_ext.fused_train(previous)


def _n(count, device="cpu"):
    """bn_finalize's count: one float64 on the device."""
    return torch.tensor([float(count)], dtype=torch.float64, device=device)


def _vec(c, lo, hi, dtype=torch.float32, device="cpu"):
    return torch.empty(c, dtype=dtype, device=device).uniform_(lo, hi)


# ---------------------------------------------------------------------------------------------------------------
# The ops against their definitions
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("k,stride,pad,hw", [(1, 1, 0, (7, 9)), (3, 1, 1, (7, 9)), (3, 2, 1, (9, 11)),
                                              (1, 2, 0, (8, 5))])
@pytest.mark.parametrize("prologue", [False, True])
def test_conv_stats_matches_its_definition(device, dtype, k, stride, pad, hw, prologue):
    torch.manual_seed(0)
    x = torch.randn(3, 16, *hw, device=device).to(dtype).contiguous(memory_format=CL)
    w = (torch.randn(24, 16, k, k, device=device) / (4 * k)).to(dtype).contiguous(memory_format=CL)
    sc, sh = (_vec(16, 0.5, 1.5, device=device), _vec(16, -0.5, 0.5, device=device)) if prologue else (None, None)
    y, sums = ops.fused_conv_stats(x, w, sc, sh, [stride, stride], [pad, pad])
    x64 = x.double()
    if prologue:
        x64 = torch.relu(x64 * sc.double().view(1, -1, 1, 1) + sh.double().view(1, -1, 1, 1))
    ref = F.conv2d(x64, w.double(), None, stride, pad)
    assert y.dtype == dtype and y.shape == ref.shape and sums.shape == (2, 24)
    assert sums.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 3e-2}[dtype]
    scale = ref.abs().max().item()
    assert (y.double() - ref).abs().max().item() <= tol * scale
    # The sums are those of y as the op returns it.
    yd = y.double()
    torch.testing.assert_close(sums.double(), torch.stack([yd.sum((0, 2, 3)), yd.square().sum((0, 2, 3))]),
                               rtol=1e-5 if dtype != torch.float64 else 1e-12, atol=1e-3 * scale)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("k,stride,pad,hw", [(1, 1, 0, (7, 9)), (3, 1, 1, (6, 6)), (3, 2, 1, (9, 11))])
def test_backward_ops_match_autograd(device, dtype, k, stride, pad, hw):
    """fused_dgrad_drelu_dbn and fused_wgrad against float64 autograd of relu(y * scale + shift) -> conv."""
    torch.manual_seed(1)
    c, kk = 16, 24
    y = torch.randn(2, c, *hw, device=device).to(dtype).contiguous(memory_format=CL)
    w = (torch.randn(kk, c, k, k, device=device) / (4 * k)).to(dtype).contiguous(memory_format=CL)
    sc, sh = _vec(c, 0.5, 1.5, device=device), _vec(c, -0.5, 0.5, device=device)
    mean, invstd = _vec(c, -0.2, 0.2, device=device), _vec(c, 0.5, 2.0, device=device)
    y64 = y.double().requires_grad_()
    w64 = w.double().requires_grad_()
    a = torch.relu(y64 * sc.double().view(1, -1, 1, 1) + sh.double().view(1, -1, 1, 1))
    out = F.conv2d(a, w64, None, stride, pad)
    dy = torch.randn_like(out).to(dtype).contiguous(memory_format=CL)
    ga, gw = torch.autograd.grad(out, (a, w64), dy.double())
    g_ref = ga * (a > 0)
    xhat = (y.double() - mean.double().view(1, -1, 1, 1)) * invstd.double().view(1, -1, 1, 1)
    sums_ref = torch.stack([g_ref.sum((0, 2, 3)), (g_ref * xhat).sum((0, 2, 3))])

    g, sums = ops.fused_dgrad_drelu_dbn(dy, w, y, sc, sh, mean, invstd, [stride] * 2, [pad] * 2)
    dw = ops.fused_wgrad(dy, y, sc, sh, list(w.shape), [stride] * 2, [pad] * 2)
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 3e-2}[dtype]
    assert g.dtype == dtype and g.shape == y.shape and dw.dtype == dtype and dw.shape == w.shape
    for got, ref in ((g, g_ref), (sums, sums_ref), (dw, gw)):
        assert not torch.isnan(got).any()
        assert (got.double() - ref).abs().max().item() <= tol * ref.abs().max().item() * (4 if got is sums else 1)
    # Masked where the prologue's ReLU is off: exactly zero there.
    assert (g.double()[(y.double() * sc.double().view(1, -1, 1, 1) + sh.double().view(1, -1, 1, 1)) <= 0] == 0).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("running_dtype", ["same", torch.bfloat16, None])
def test_finalize_matches_batch_norm(device, dtype, running_dtype):
    torch.manual_seed(2)
    x = (torch.randn(4, 12, 5, 3, device=device, dtype=torch.float64) * 3 + 1).to(dtype)
    n = x.numel() // 12
    sums = torch.stack([x.sum((0, 2, 3)), x.square().sum((0, 2, 3))])
    gamma, beta = _vec(12, 0.5, 1.5, device=device), _vec(12, -0.5, 0.5, device=device)
    rdt = dtype if running_dtype == "same" else running_dtype
    rm = rv = None
    if rdt is not None:
        rm, rv = _vec(12, -1, 1, rdt, device), _vec(12, 0.5, 2, rdt, device)
        rm_ref, rv_ref = rm.double().clone(), rv.double().clone()
    scale, shift, mean, invstd = ops.bn_finalize(sums, _n(n, device), gamma, beta, rm, rv, 0.1, 1e-5)
    ref = F.batch_norm(x.double(), rm_ref if rm is not None else None, rv_ref if rm is not None else None,
                       gamma.double(), beta.double(), True, 0.1, 1e-5)
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    for t in (scale, shift, mean, invstd):
        assert t.dtype == dtype and t.shape == (12,)
    torch.testing.assert_close((x.double() * scale.double().view(1, -1, 1, 1) + shift.double().view(1, -1, 1, 1)),
                               ref, rtol=tol, atol=tol * 10)
    torch.testing.assert_close(mean.double(), x.double().mean((0, 2, 3)), rtol=tol, atol=tol)
    if rm is not None:
        rtol = 1e-2 if rdt == torch.bfloat16 else tol
        torch.testing.assert_close(rm.double(), rm_ref, rtol=rtol, atol=rtol)
        torch.testing.assert_close(rv.double(), rv_ref, rtol=rtol, atol=rtol)


def test_finalize_clamps_a_negative_variance():
    # sum^2 / n above the sum of squares by rounding: variance 0, not NaN.
    sums = torch.tensor([[3.0], [2.9999]])
    scale, shift, mean, invstd = ops.bn_finalize(sums, _n(3), torch.ones(1), torch.zeros(1), None, None, 0.1, 1e-5)
    assert torch.isfinite(invstd).all() and invstd.item() == pytest.approx(1e-5 ** -0.5, rel=1e-4)


@pytest.mark.parametrize("call,match", [
    (lambda: ops.fused_conv_stats(torch.randn(2, 3, 4), torch.randn(4, 3, 1, 1), None, None, [1, 1], [0, 0]),
     "x must be a 4-D"),
    (lambda: ops.fused_conv_stats(torch.randn(2, 3, 4, 4), torch.randn(4, 5, 1, 1), None, None, [1, 1], [0, 0]),
     "weight must have x's 3 input channels"),
    (lambda: ops.fused_conv_stats(torch.randn(2, 3, 4, 4), torch.randn(4, 3, 1, 1), torch.ones(3), None, [1, 1],
                                  [0, 0]), "scale and shift must be given together"),
    (lambda: ops.fused_conv_stats(torch.randn(2, 3, 4, 4), torch.randn(4, 3, 1, 1), torch.ones(2), torch.ones(2),
                                  [1, 1], [0, 0]), "scale must have shape \\[3\\]"),
    (lambda: ops.fused_conv_stats(torch.randn(2, 3, 4, 4), torch.randn(4, 3, 1, 1), None, None, [0, 1], [0, 0]),
     "stride must be two positive ints"),
    (lambda: ops.fused_conv_stats(torch.randn(2, 3, 2, 2), torch.randn(4, 3, 3, 3), None, None, [1, 1], [0, 0]),
     "smaller than the kernel"),
    (lambda: ops.fused_conv_stats(torch.randn(2, 3, 4, 4), torch.randn(4, 3, 1, 1).double(), None, None, [1, 1],
                                  [0, 0]), "weight must have x's dtype"),
    (lambda: ops.fused_wgrad(torch.randn(2, 4, 4, 4), torch.randn(2, 3, 4, 4), None, None, [4, 3, 1], [1, 1],
                             [0, 0]), "weight_size must be"),
    (lambda: ops.fused_wgrad(torch.randn(2, 4, 3, 4), torch.randn(2, 3, 4, 4), None, None, [4, 3, 1, 1], [1, 1],
                             [0, 0]), "grad must have the conv's output shape"),
    (lambda: ops.fused_dgrad_drelu_dbn(torch.randn(2, 4, 4, 4), torch.randn(4, 3, 1, 1), torch.randn(2, 3, 4, 4),
                                       *[torch.ones(3)] * 3, torch.ones(2), [1, 1], [0, 0]),
     "invstd must have shape \\[3\\]"),
    (lambda: ops.bn_finalize(torch.randn(3, 4), _n(8), torch.ones(4), torch.zeros(4), None, None, 0.1, 1e-5),
     "sums must have shape \\[2, C\\]"),
    (lambda: ops.bn_finalize(torch.randn(2, 4), _n(1), torch.ones(4), torch.zeros(4), None, None, 0.1, 1e-5),
     "count must be more than 1"),
    (lambda: ops.bn_finalize(torch.randn(2, 4), _n(8), torch.ones(4), torch.zeros(4), torch.zeros(4), None, 0.1,
                             1e-5), "running_mean and running_var must be given together"),
    (lambda: ops.bn_finalize(torch.randn(2, 4).half(), _n(8), torch.ones(4), torch.zeros(4), None, None, 0.1, 1e-5),
     "sums must be float32 or float64"),
    (lambda: ops.bn_finalize(torch.randn(2, 4), torch.ones(2), torch.ones(4), torch.zeros(4), None, None, 0.1, 1e-5),
     "count must be a one-element floating-point tensor"),
])
def test_bad_arguments_name_the_argument(call, match):
    with pytest.raises(RuntimeError, match=match):
        call()


def test_ops_pass_opcheck():
    x = torch.randn(2, 8, 5, 5).contiguous(memory_format=CL)
    w = torch.randn(6, 8, 3, 3).contiguous(memory_format=CL)
    sc, sh = torch.rand(8) + 0.5, torch.rand(8) - 0.5
    dy = torch.randn(2, 6, 5, 5).contiguous(memory_format=CL)
    tests = ("test_schema", "test_faketensor")
    torch.library.opcheck(ops.fused_conv_stats, (x, w, sc, sh, [1, 1], [1, 1]), test_utils=tests)
    torch.library.opcheck(ops.fused_dgrad_drelu_dbn, (dy, w, x, sc, sh, sc, sh, [1, 1], [1, 1]), test_utils=tests)
    torch.library.opcheck(ops.fused_wgrad, (dy, x, sc, sh, [6, 8, 3, 3], [1, 1], [1, 1]), test_utils=tests)
    torch.library.opcheck(ops.bn_finalize, (torch.rand(2, 8) + 4, _n(25), sc, sh, torch.zeros(8), torch.ones(8), 0.1,
                                            1e-5), test_utils=tests)


# ---------------------------------------------------------------------------------------------------------------
# Blocks and models against torchvision
# ---------------------------------------------------------------------------------------------------------------

def _block_pair(inplanes, planes, stride, downsample, momentum=0.1, eps=1e-5, seed=0):
    torch.manual_seed(seed)

    def ds(mod):
        return nn.Sequential(mod.conv1x1(inplanes, planes * 4, stride), nn.BatchNorm2d(planes * 4)) \
            if downsample else None
    tv = torchvision.models.resnet.Bottleneck(inplanes, planes, stride, ds(torchvision.models.resnet))
    ours = resnet_ext.Bottleneck(inplanes, planes, stride, ds(resnet_ext.models))
    for m in tv.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum, m.eps = momentum, eps
    randomize_bn(tv, seed)
    ours.load_state_dict(tv.state_dict())
    for a, b in zip(tv.modules(), ours.modules()):
        if isinstance(a, nn.BatchNorm2d):
            b.momentum, b.eps = a.momentum, a.eps
    return tv.train(), ours.train()


def _compare_step(tv, ours, x, dtype=torch.float64, autocast=None, tol=1e-10):
    """One forward + backward of both; asserts output, input grad, every param grad (relative to its largest),
    running statistics and counters agree to `tol`."""
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    ctx = (lambda: torch.autocast(x.device.type, dtype=autocast)) if autocast else torch.enable_grad
    with ctx():
        ref = tv(x1)
    with ctx():
        out = ours(x2)
    go = torch.randn_like(ref)
    ref.backward(go)
    out.backward(go)
    assert not torch.isnan(out).any()

    def rel(a, b):
        return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()
    errs = {"out": rel(out, ref), "dx": rel(x2.grad, x1.grad)}
    for (n, p), (_, q) in zip(tv.named_parameters(), ours.named_parameters()):
        errs[n] = rel(q.grad, p.grad)
    for (n, b), (_, c) in zip(tv.named_buffers(), ours.named_buffers()):
        errs[n] = rel(c, b) if b.is_floating_point() else float((b != c).any())
    bad = {k: v for k, v in errs.items() if not v <= tol}
    assert not bad, bad
    return errs


@pytest.mark.parametrize("inplanes,planes,stride,downsample,hw", [
    (32, 8, 1, False, (7, 9)), (16, 8, 2, True, (9, 11)), (16, 8, 1, True, (5, 5)), (16, 8, 2, True, (2, 3))])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_bottleneck_matches_torchvision_in_float64(fused_on, inplanes, planes, stride, downsample, hw, momentum):
    tv, ours = _block_pair(inplanes, planes, stride, downsample, momentum=momentum, eps=1e-3)
    tv, ours = tv.double(), ours.double()
    x = torch.randn(2, inplanes, *hw, dtype=torch.float64)
    for step in range(2):  # the second step starts from moved running statistics and counters
        _compare_step(tv, ours, x + step)
    assert resnet_ext.path_counts().get("train_graph", 0) == 2 * (4 if downsample else 3)
    assert ours.bn1.num_batches_tracked.item() == 2


@pytest.mark.parametrize("x_cl,weights_cl", [(False, False), (True, False), (False, True)])
def test_block_output_has_torchvisions_layout(fused_on, x_cl, weights_cl):
    """The ops compute channels_last; an NCHW input to an NCHW block got a channels_last output (hooks and callers
    of the layers saw other strides than torchvision's)."""
    tv, ours = _block_pair(16, 8, 2, True)
    x = torch.randn(2, 16, 9, 11)
    if x_cl:
        x = x.contiguous(memory_format=torch.channels_last)
    if weights_cl:
        tv, ours = tv.to(memory_format=torch.channels_last), ours.to(memory_format=torch.channels_last)
    ref, out = tv(x), ours(x)
    assert resnet_ext.path_counts().get("train_graph", 0) == 4
    assert out.stride() == ref.stride()
    assert rel_err(out, ref) < 1e-4


@pytest.mark.parametrize("stride,downsample", [(1, False), (2, True)])
def test_block_passes_gradcheck(fused_on, stride, downsample):
    """torch.autograd.gradcheck of the decomposition's backward (float64, every parameter and the input): the
    block's output in train mode as a function of x and all its weights, BN affine parameters included."""
    _, ours = _block_pair(8, 2, stride, downsample)  # 8 = 4 * 2 in and out: an identity shortcut fits too
    ours = ours.double()
    names = [n for n, _ in ours.named_parameters()]
    x = torch.randn(2, 8, 5, 4, dtype=torch.float64, requires_grad=True)

    def f(x, *params):
        return torch.func.functional_call(ours, dict(zip(names, params)), (x,))

    params = tuple(p.detach().clone().requires_grad_() for p in ours.parameters())
    resnet_ext.reset_path_counts()
    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-7, rtol=1e-5)
    assert resnet_ext.path_counts().get("train_graph", 0) > 0  # the decomposition ran, not the stock block


def test_whole_model_train_step_matches_torchvision(fused_on):
    torch.manual_seed(3)
    tv = randomize_bn(tv_model("resnet50", num_classes=10)).double().train()
    ours = resnet_ext.resnet50(num_classes=10).double().train()
    ours.load_state_dict(tv.state_dict())
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    _compare_step(tv, ours, x, tol=1e-9)
    assert resnet_ext.path_counts().get("train_graph", 0) == 16 * 3 + 4


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("downsample", [False, True])
def test_bf16_autocast_error_no_worse_than_torchvision(fused_on, device, downsample):
    """Under bf16 autocast the block's output and gradients, judged against float64, within 2x torchvision's own
    bf16 error (on CUDA: through cuDNN's graphs)."""
    tv, ours = _block_pair(32, 16, 2, True, seed=4) if downsample else _block_pair(64, 16, 1, False, seed=4)
    tv, ours = tv.to(device), ours.to(device)
    ref64 = copy.deepcopy(tv).double()
    x = torch.randn(4, tv.conv1.in_channels, 8, 8, device=device).contiguous(memory_format=CL)
    outs = {}
    for name, m, ac in (("tv", tv, True), ("ours", ours, True), ("ref", ref64, False)):
        xi = (x.double() if name == "ref" else x).detach().clone().requires_grad_()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=ac):
            y = m(xi)
        y.float().square().sum().backward() if name != "ref" else y.square().sum().backward()
        outs[name] = (y.double(), xi.grad.double(), m.conv2.weight.grad.double())
    # ours ran the decomposition (under autocast too)
    assert resnet_ext.path_counts().get("train_graph", 0) == (4 if downsample else 3)
    for i, what in enumerate(("out", "dx", "dw2")):
        ref = outs["ref"][i]
        e_tv = (outs["tv"][i] - ref).norm() / ref.norm()
        e_ours = (outs["ours"][i] - ref).norm() / ref.norm()
        assert e_ours <= 2 * e_tv + 1e-6, (what, e_ours.item(), e_tv.item())


def test_falls_back_where_it_does_not_apply(fused_on):
    tv, ours = _block_pair(32, 8, 1, False)
    x = torch.randn(2, 32, 5, 5)
    handle = ours.bn2.register_forward_hook(lambda *a: None)
    assert resnet_ext.explain_train(x, ours)[0] != "fused_train"
    assert "not the stock" in resnet_ext.explain_train(x, ours)[1] or "hook" in resnet_ext.explain_train(x, ours)[1]
    ours(x)
    assert resnet_ext.path_counts().get("train_graph", 0) == 0
    handle.remove()
    assert resnet_ext.explain_train(x, ours)[0] == "fused_train"
    # Mixed dtypes: torchvision's error, from its own path.
    with pytest.raises(RuntimeError) as ours_err:
        ours(x.double())
    with pytest.raises(RuntimeError) as tv_err:
        tv(x.double())
    assert str(ours_err.value) == str(tv_err.value)
    assert "mixed dtypes" in resnet_ext.explain_train(x.double(), ours)[1]
    # One value per channel: torchvision's ValueError, from its own path.
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        ours(torch.randn(1, 32, 1, 1))
    # Eval mode and BasicBlocks are untouched.
    ours.eval()
    assert resnet_ext.explain_train(x, ours)[0] != "fused_train"
    basic = resnet_ext.BasicBlock(8, 8).train()
    assert "not the stock Bottleneck" in resnet_ext.explain_train(torch.randn(2, 8, 4, 4), basic)[1]


@pytest.mark.parametrize("attr", ["weight", "bias"])
def test_a_bn_without_weight_or_bias_runs_as_torchvision(fused_on, attr):
    """A BN whose weight or bias was set to None (a BN without a learnable scale or shift): torchvision's block,
    gradients and statistics (it raised AttributeError in the decomposition's check)."""
    tv, ours = _block_pair(32, 8, 1, False)
    tv, ours = tv.double(), ours.double()
    for m in (tv, ours):
        setattr(m.bn1, attr, None)
    x = torch.randn(2, 32, 5, 5, dtype=torch.float64)
    assert resnet_ext.explain_train(x, ours)[0] != "fused_train"
    _compare_step(tv, ours, x)


def test_second_derivative_is_a_clear_error(fused_on):
    _, ours = _block_pair(32, 8, 1, False)
    x = torch.randn(2, 32, 4, 4, requires_grad=True)
    (g,) = torch.autograd.grad(ours(x).sum(), x, create_graph=False)
    assert g.shape == x.shape
    with pytest.raises(NotImplementedError, match="second derivative"):
        torch.autograd.grad(ours(x).sum(), x, create_graph=True)


def test_switch_is_off_by_default_and_checks_its_argument():
    assert resnet_ext.fused_train() is False
    with pytest.raises(TypeError, match="enabled must be True or False"):
        resnet_ext.fused_train("yes")


@requires_experimental
@pytest.mark.skipif(not hasattr(_C, "cudnn_graph_probe"), reason="needs an experimental CUDA build")
@pytest.mark.parametrize("arch", ["resnet50", "resnet101"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_every_graph_validates_without_a_gpu(arch, dtype):
    """cudnn-frontend's own checks of every graph a train step builds (no GPU needed; the plans need one)."""
    bad = {g: why for g in fused_train_graphs(arch, 256) if (why := _C.cudnn_graph_probe(*g, dtype, False))}
    assert not bad, bad


@requires_experimental
@pytest.mark.skipif(not hasattr(_C, "cudnn_graph_probe"), reason="needs an experimental CUDA build")
def test_probe_rejects_bad_arguments():
    with pytest.raises(RuntimeError, match="pattern must be"):
        _C.cudnn_graph_probe("fprop", (2, 8, 4, 4), (8, 8, 1, 1), (1, 1), (0, 0), False, "bfloat16", False)
    with pytest.raises(RuntimeError, match="dtype must be float16 or bfloat16"):
        _C.cudnn_graph_probe("wgrad", (2, 8, 4, 4), (8, 8, 1, 1), (1, 1), (0, 0), True, "float32", False)
    with pytest.raises(RuntimeError, match="x must be"):
        _C.cudnn_graph_probe("wgrad", (2, 8, 4, 4), (8, 4, 1, 1), (1, 1), (0, 0), True, "float16", False)
    with pytest.raises(RuntimeError, match="stride must be two positive ints"):
        _C.cudnn_graph_probe("dgrad_drelu_dbn", (2, 8, 8, 8), (8, 8, 3, 3), (0, 0), (1, 1), True, "float16", False)
    with pytest.raises(RuntimeError, match="smaller than the kernel"):
        _C.cudnn_graph_probe("conv_stats", (2, 8, 2, 2), (8, 8, 3, 3), (1, 1), (0, 0), False, "float16", False)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="needs a CUDA device"):
            _C.cudnn_graph_probe("conv_stats", (2, 8, 8, 8), (8, 8, 3, 3), (1, 1), (1, 1), True, "float16", True)


@requires_experimental
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graphs_ran_for_every_op(fused_on):
    """On the GPU the ops run cuDNN's graphs, not their compositions (path_counts says which ran)."""
    _, ours = _block_pair(64, 16, 2, True)
    ours = ours.cuda()
    x = torch.randn(4, 64, 16, 16, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ours(x).float().sum().backward()
    counts = resnet_ext.path_counts()
    assert not any(k.startswith("cudnn_graph_fallback") for k in counts), counts
    assert counts.get("cudnn_graph:conv_stats", 0) == 4 and counts.get("cudnn_graph:dgrad_drelu_dbn", 0) == 2
