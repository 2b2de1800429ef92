"""GPU proofs of the fused training BN(+add)+ReLU kernels (skipped without a CUDA device): every distinct
ResNet-50 activation shape x batch {1, 7, 64} x {fp32, fp16, bf16}, forward and backward against a float64
reference of stock ops, on memory poisoned with NaN; NCHW and unaligned-channel paths; a whole AMP step."""

import pytest
import torch
import torch.nn.functional as F

import resnet_ext
from resnet_ext._C_loader import _C
from conftest import hard_bn_batches, rel_err, requires_cuda, requires_experimental
from resnet_ext.bn_act import bn_act
from resnet_ext.shapes import activation_shapes

pytestmark = requires_cuda

TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 1e-2}
SHAPES = list(dict.fromkeys((1,) + s[1:] for s in activation_shapes("resnet50", 1)))


def poison_free_memory():
    """Refill the caching allocator with blocks of 0xFF bytes (NaN in fp32, fp16 and bf16), so outputs and scratch
    that a kernel fails to write show up as NaN. A bounded amount after empty_cache(): asking for "all free memory"
    each time made the allocator's reservation grow until it ran out."""
    torch.cuda.empty_cache()
    large = torch.empty(1 << 30, dtype=torch.uint8, device="cuda").fill_(255)  # large-pool segment (> 1 MB blocks)
    small = [torch.empty(512 << 10, dtype=torch.uint8, device="cuda").fill_(255) for _ in range(16)]  # small pool
    del large, small


def run_case(n, c, h, w, residual, dtype, channels_last=True, relu=True):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    g = torch.Generator(device="cuda").manual_seed(n * 1000 + c)
    x = (torch.randn(n, c, h, w, device="cuda", generator=g) * 3 + 2).to(dtype).contiguous(memory_format=fmt)
    r = torch.randn(n, c, h, w, device="cuda", generator=g).to(dtype).contiguous(memory_format=fmt) if residual else None
    gy = torch.randn(n, c, h, w, device="cuda", generator=g).to(dtype).contiguous(memory_format=fmt)
    bn = torch.nn.BatchNorm2d(c).cuda().train()
    ref_bn = torch.nn.BatchNorm2d(c).cuda().double().train()
    with torch.no_grad():
        for m in (bn, ref_bn):
            m.weight.copy_(torch.linspace(0.5, 1.5, c))
            m.bias.copy_(torch.linspace(-0.2, 0.2, c))
            m.running_mean.fill_(1.0)
            m.running_var.fill_(2.0)
    xa = x.clone().requires_grad_()
    ra = r.clone().requires_grad_() if residual else None
    poison_free_memory()
    y = bn_act(xa, bn, ra, relu)
    y.backward(gy)
    xr = x.double().requires_grad_()
    rr = r.double().requires_grad_() if residual else None
    pre = ref_bn(xr)
    if residual:
        pre = pre + rr
    tol = TOL[dtype]
    assert rel_err(y, F.relu(pre) if relu else pre) <= tol, "forward"
    if relu:
        # The ReLU is a discontinuity: where the exact pre-activation is within rounding of 0, ours and the reference
        # may fall on different sides, and one such element moved dx by up to 40% of its max in a 51M-element test
        # (H200). So: the masks may differ only there, and the gradients are compared under our mask.
        mask = y.detach() > 0
        flips = mask != (pre.detach() > 0)
        near_zero = pre.detach().abs() <= tol * pre.detach().abs().max()
        assert not (flips & ~near_zero).any(), "ReLU mask differs away from 0"
        yr = pre * mask
    else:
        yr = pre
    yr.backward(gy.double())
    assert y.is_contiguous(memory_format=fmt)
    assert rel_err(xa.grad, xr.grad) <= tol, "dx"
    if residual:
        assert rel_err(ra.grad, rr.grad) <= tol, "dresidual"
    # Reductions accumulate in fp32 whatever the dtype.
    assert rel_err(bn.weight.grad, ref_bn.weight.grad) <= max(tol, 1e-4), "dweight"
    assert rel_err(bn.bias.grad, ref_bn.bias.grad) <= max(tol, 1e-4), "dbias"
    assert rel_err(bn.running_mean, ref_bn.running_mean) <= 1e-5, "running_mean"
    assert rel_err(bn.running_var, ref_bn.running_var) <= 1e-5, "running_var"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("batch", [1, 7, 64])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"c{s[1]}_{s[2]}x{s[3]}{'+res' if s[4] else ''}")
def test_bn_act_matches_float64_reference(shape, batch, dtype):
    _, c, h, w, residual = shape
    run_case(batch, c, h, w, residual, dtype)


@pytest.mark.parametrize("case", [
    dict(n=5, c=64, h=9, w=7, residual=True, channels_last=False),     # NCHW
    dict(n=3, c=12, h=5, w=5, residual=True, channels_last=True),      # channels not a multiple of the vector
    dict(n=1, c=256, h=3, w=3, residual=False, channels_last=True),    # batch 1
    dict(n=9, c=2048, h=1, w=1, residual=True, channels_last=True),    # 1x1 maps
    dict(n=4, c=64, h=8, w=8, residual=False, channels_last=True, relu=False),
], ids=["nchw", "c12", "batch1", "1x1", "norelu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_bn_act_other_layouts(case, dtype):
    run_case(dtype=dtype, **case)


def test_large_map_statistics_stay_accurate():
    # 2^23 values per channel with a large mean: the shifted fp32 sums must not lose the variance.
    run_case(128, 16, 256, 256, False, torch.float32)


@pytest.mark.parametrize("case", ["offset", "outlier", "inf"])
def test_statistics_as_precise_as_batchnorm_on_hard_batches(case):
    """The one-process kernel's statistics are fp32 sums about the batch's first mean (a second pass): about a
    channel's first value, an outlier there (1e4 among N(0, 1)), they lost 5e-6 of the output where torch's BN
    loses 7e-8 (CPU emulation). A non-finite value gives the running mean torch's BN gives (+-inf or NaN)."""
    x = hard_bn_batches()[case].cuda().contiguous(memory_format=torch.channels_last)
    c = x.shape[1]
    bn, stock = torch.nn.BatchNorm2d(c).cuda().train(), torch.nn.BatchNorm2d(c).cuda().train()
    ref_mean, ref_var = torch.zeros(c, dtype=torch.float64), torch.ones(c, dtype=torch.float64)
    ref = F.batch_norm(x.cpu().double(), ref_mean, ref_var, training=True, momentum=0.1)
    with torch.no_grad():
        y, y_stock = bn_act(x, bn, None, False), stock(x)
    if case == "inf":  # as torch's BN on this device
        assert torch.equal(bn.running_mean.isnan(), stock.running_mean.isnan()), (bn.running_mean, stock.running_mean)
        assert torch.equal(bn.running_mean.isinf(), stock.running_mean.isinf()), (bn.running_mean, stock.running_mean)
        return
    assert rel_err(y.cpu(), ref) < 10 * rel_err(y_stock.cpu(), ref) + 1e-6
    assert rel_err(bn.running_mean.cpu(), ref_mean) < 1e-6 and rel_err(bn.running_var.cpu(), ref_var) < 1e-6


def test_amp_training_step_matches_torchvision(train_mode):
    """One AMP (bf16) training step of resnet50, ours and torchvision's, each judged against the same step in fp32
    (no autocast, no TF32): ours may be off by at most 1.25x torchvision's own AMP error (outputs, gradients,
    running statistics). Ours against torchvision directly is printed only: two 16-bit runs differ by both errors."""
    import copy

    import torchvision

    torch.manual_seed(0)
    tv = torchvision.models.resnet50(num_classes=100)
    ours = resnet_ext.resnet50(num_classes=100)
    ours.load_state_dict(tv.state_dict())
    ref = copy.deepcopy(tv)
    x = torch.randn(16, 3, 128, 128, device="cuda").contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, 100, (16,), device="cuda")
    outs = []
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        for m, amp in ((ours, True), (tv, True), (ref, False)):
            m.cuda().to(memory_format=torch.channels_last).train()
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = amp
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                out = m(x)
                loss = F.cross_entropy(out, target)
            loss.backward()
            outs.append(out.float())
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old
    checks = {"output": (outs[0], outs[1], outs[2]),
              "fc grad": (ours.fc.weight.grad, tv.fc.weight.grad, ref.fc.weight.grad),
              "conv1 grad": (ours.conv1.weight.grad, tv.conv1.weight.grad, ref.conv1.weight.grad),
              "layer2.0.bn2 running_var": (ours.layer2[0].bn2.running_var, tv.layer2[0].bn2.running_var,
                                           ref.layer2[0].bn2.running_var)}
    report = {k: (rel_err(o, r), rel_err(t, r), rel_err(o, t)) for k, (o, t, r) in checks.items()}
    print("\nAMP step, rel err (ours vs fp32, torchvision vs fp32, ours vs torchvision): "
          + "; ".join(f"{k} {a:.2e} {b:.2e} {c:.2e}" for k, (a, b, c) in report.items()))
    for k, (ours_err, tv_err, _) in report.items():
        assert ours_err <= 1.25 * tv_err + 1e-6, (k, ours_err, tv_err)


@requires_experimental  # the opt-in kernels are only in such a build
def test_the_bn_kernels_are_the_ones_asked_for(request):
    """gpu_check.sh runs this file twice, the second time with --bn-optin: that run must have exercised the opt-in
    training-BN kernels, the first the verified ones."""
    want = request.config.getoption("--bn-optin") and resnet_ext.build_info()["cuda"]
    assert _C.bn_optin() == want


@pytest.fixture(params=[False, pytest.param(True, marks=requires_experimental)], ids=["units", "fused_train"])
def decomposition(request):
    """The training step's Bottlenecks as the units (False) or as the fused decomposition (`fused_train`, #23)."""
    previous = resnet_ext.fused_train(request.param)
    resnet_ext.reset_path_counts()
    yield request.param
    resnet_ext.fused_train(previous)


def test_cuda_graph_captures_a_whole_amp_training_step(train_mode, decomposition):
    """#22.3 (and #23): forward, backward and optimizer step of an AMP training step captured as one CUDA graph
    (which fails on any host sync: the BN statistics, running statistics and num_batches_tracked stay on the
    device), replayed on new data, equal to the same steps run eagerly on a copy: parameters, running statistics,
    counters. With the fused decomposition, a resnet50's Bottlenecks through cuDNN's graphs."""
    import copy

    torch.manual_seed(0)
    arch = resnet_ext.resnet50 if decomposition else resnet_ext.resnet18
    model = arch(num_classes=10).cuda().to(memory_format=torch.channels_last).train()
    eager = copy.deepcopy(model)
    opts = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for m in (model, eager)]
    batches = [(torch.randn(8, 3, 64, 64, device="cuda").contiguous(memory_format=torch.channels_last),
                torch.randint(0, 10, (8,), device="cuda")) for _ in range(6)]

    def step(m, opt, x, t):
        with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):  # no weight-cast cache under capture
            loss = F.cross_entropy(m(x), t)
        loss.backward()
        opt.step()
        return loss

    static_x, static_t = (b.clone() for b in batches[0])
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as capture requires: three eager steps
        for x, t in batches[:3]:
            opts[0].zero_grad(set_to_none=True)
            static_x.copy_(x), static_t.copy_(t)
            step(model, opts[0], static_x, static_t)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opts[0].zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        static_loss = step(model, opts[0], static_x, static_t)
    losses = []
    for x, t in batches[3:]:
        static_x.copy_(x), static_t.copy_(t)
        graph.replay()
        losses.append(static_loss.item())
    eager_losses = []
    for x, t in batches:  # a replay writes fresh gradients, as a step after zero_grad does
        opts[1].zero_grad(set_to_none=True)
        eager_losses.append(step(eager, opts[1], x, t).item())
    torch.testing.assert_close(losses, eager_losses[3:], rtol=2e-2, atol=1e-3)
    for (name, a), b in zip(model.state_dict().items(), eager.state_dict().values()):
        if name.endswith("num_batches_tracked"):
            assert int(a) == int(b) == len(batches), name
        else:
            torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-3, msg=name)
    if decomposition:
        assert resnet_ext.path_counts().get("train_graph", 0) > 0
