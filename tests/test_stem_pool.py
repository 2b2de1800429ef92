"""resnet_ext::stem_pool (experimental build; #24 item 1): a ResNet stem -- conv 7x7/2 padding 3, per-channel fp32
scale and shift (BN), ReLU, max pool 3x3/2 padding 1 -- in one op. On the CPU (and for what the CUDA kernel does
not take) the composition; on CUDA the fused kernel, against an fp32 reference on fresh inputs, odd sizes, batch 1
and the resnet stem's own shapes, NaN included."""
import copy

import pytest
import torch
import torch.nn.functional as F

import resnet_ext
from resnet_ext import switches
from resnet_ext.engine import cuda, frozen, structure, units
from conftest import norm_err, randomize_bn, requires_experimental, tv_model

pytestmark = requires_experimental
ops = torch.ops.resnet_ext
CL = torch.channels_last


def _operands(n, h, w, dtype, device, k=64, c=3, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(n, c, h, w, device=device, generator=g).to(dtype).contiguous(memory_format=CL)
    wt = (torch.randn(k, c, 7, 7, device=device, generator=g) / (c * 49) ** 0.5).to(dtype).contiguous(
        memory_format=CL)
    scale = torch.rand(k, device=device, generator=g) + 0.5
    shift = torch.rand(k, device=device, generator=g) - 0.5
    return x, wt, scale, shift


def _reference(x, w, scale, shift):
    """The fp32 (float64 on the CPU) reference: conv without TF32, epilogue, ReLU, pool."""
    acc = torch.float64 if x.device.type == "cpu" else torch.float32
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        y = F.conv2d(x.to(acc), w.to(acc), None, 2, 3)
    finally:
        torch.backends.cudnn.allow_tf32 = old
    y = torch.relu(y * scale.to(acc).view(1, -1, 1, 1) + shift.to(acc).view(1, -1, 1, 1))
    return F.max_pool2d(y, 3, 2, 1)


@pytest.mark.parametrize("n,h,w", [(1, 224, 224), (2, 57, 61), (3, 9, 10), (1, 1, 1), (2, 2, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_cpu_composition_matches_the_reference(n, h, w, dtype):
    x, wt, scale, shift = _operands(n, h, w, dtype, "cpu")
    y = ops.stem_pool(x, wt, scale, shift)
    ref = _reference(x, wt, scale, shift)
    assert y.dtype == dtype and y.shape == ref.shape and y.is_contiguous(memory_format=CL)
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype]
    assert (y.double() - ref.double()).abs().max() <= tol * ref.abs().max().clamp_min(1)


def test_bad_arguments_name_the_argument():
    x, wt, scale, shift = _operands(1, 16, 16, torch.float32, "cpu")
    with pytest.raises(RuntimeError, match="x must be a floating-point 4-D"):
        ops.stem_pool(x[0], wt, scale, shift)
    with pytest.raises(RuntimeError, match="weight must be \\[K, 3, 7, 7\\]"):
        ops.stem_pool(x, wt[:, :, :3], scale, shift)
    with pytest.raises(RuntimeError, match="shift must be a floating-point \\[64\\]"):
        ops.stem_pool(x, wt, scale, shift[:5])
    with pytest.raises(RuntimeError, match="weight must have x's dtype"):
        ops.stem_pool(x, wt.double(), scale, shift)


def test_opcheck():
    x, wt, scale, shift = _operands(2, 19, 23, torch.float32, "cpu")
    torch.library.opcheck(ops.stem_pool, (x, wt, scale, shift), test_utils=("test_schema", "test_faketensor"))


# ---- the CUDA plan's use of it (switches.fused_stem; on the CPU the plan runs the op's composition) ------------

def _model(dtype=torch.bfloat16, device="cpu"):
    tv = randomize_bn(tv_model("resnet50", num_classes=10)).eval()
    ours = resnet_ext.from_torchvision(copy.deepcopy(tv)).eval().to(device=device, dtype=dtype).to(memory_format=CL)
    return ours, tv.to(device)


def _plan(model, x, fused):
    """The recorded plan's forward with fused_stem on or off, and the path counts."""
    previous = switches.fused_stem(fused)
    units.reset_path_counts()
    try:
        with torch.no_grad():
            out = cuda.forward_fused(model, x, frozen.folds_of(model))
    finally:
        switches.fused_stem(previous)
    return out, resnet_ext.path_counts()


@pytest.mark.parametrize("frozen_mode", [False, True], ids=["default", "frozen"])
def test_plan_runs_the_stem_as_one_op(frozen_mode):
    ours, tv = _model()
    if frozen_mode:
        resnet_ext.freeze(ours)
    g = torch.Generator().manual_seed(0)  # a fixed input: the error does not depend on the test order
    x = torch.randn(4, 3, 64, 48, generator=g).to(torch.bfloat16).contiguous(memory_format=CL)
    fused, counts = _plan(ours, x, True)
    unfused, unfused_counts = _plan(ours, x, False)
    assert counts.get("stem_pool") == 1 and "stem_pool" not in unfused_counts
    with torch.no_grad():
        ref = tv(x.float())
        tv_err = norm_err(copy.deepcopy(tv).to(torch.bfloat16)(x).float(), ref)
    # Both within torchvision's own bf16 error of its fp32 logits (the two differ in where bf16 rounds).
    assert norm_err(fused.float(), ref) <= 1.5 * tv_err
    assert norm_err(unfused.float(), ref) <= 1.5 * tv_err


def test_plan_keeps_the_two_ops_where_stem_pool_does_not_apply():
    ours, _ = _model()
    x = torch.randn(1, 3, 40, 40).to(torch.bfloat16).contiguous(memory_format=CL)
    s = structure.of(ours, x.dtype, 3)
    previous = switches.fused_stem(True)
    try:
        assert cuda.takes_stem_pool(ours, s.stem, x)
        assert not cuda.takes_stem_pool(ours, s.stem, x.float())  # the kernel is 16-bit only
        for pool in (torch.nn.MaxPool2d(3, 2, 1, ceil_mode=True), torch.nn.MaxPool2d(2, 2),
                     torch.nn.MaxPool2d(3, 2, 1, return_indices=True), torch.nn.AvgPool2d(3, 2, 1)):
            kept, ours.maxpool = ours.maxpool, pool
            assert not cuda.takes_stem_pool(ours, s.stem, x), pool
            ours.maxpool = kept
        handle = ours.maxpool.register_forward_hook(lambda m, i, o: None)
        assert not cuda.takes_stem_pool(ours, s.stem, x)  # a hook on the pool must see it run
        handle.remove()
    finally:
        switches.fused_stem(previous)
    # A model whose stem is not 7x7/2 over 3 channels keeps conv_bn_act and the pool.
    other = resnet_ext.resnet18(num_classes=10).eval().to(torch.bfloat16)
    other.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False).to(torch.bfloat16)
    out, counts = _plan(other, x, True)
    assert out is not None and "stem_pool" not in counts


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def poisoned():
    """The op's output NaN-filled before each launch: a pixel the kernel does not write fails the finite checks."""
    resnet_ext._C.set_poison_outputs(True)
    yield
    resnet_ext._C.set_poison_outputs(False)


@requires_cuda
@pytest.mark.parametrize("n,h,w", [(1, 224, 224), (7, 224, 224), (64, 224, 224), (256, 224, 224), (2, 57, 61),
                                   (3, 9, 10), (1, 1, 1), (5, 33, 17)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_kernel_matches_fp32_reference(n, h, w, dtype, poisoned):
    x, wt, scale, shift = _operands(n, h, w, dtype, "cuda", seed=n + h)
    y = ops.stem_pool(x, wt, scale, shift)
    ref = _reference(x, wt, scale, shift)
    assert y.shape == ref.shape and y.dtype == dtype and y.is_contiguous(memory_format=CL)
    assert torch.isfinite(y.float()).all()
    # Judged against torch's own 16-bit stem (conv in dtype, then BN, ReLU, pool) on the same inputs.
    stock = F.max_pool2d(torch.relu(F.conv2d(x, wt, None, 2, 3).float() * scale.view(1, -1, 1, 1)
                                    + shift.view(1, -1, 1, 1)), 3, 2, 1)
    err = (y.float() - ref).abs().max().item()
    stock_err = (stock - ref).abs().max().item()
    assert err <= 1.25 * stock_err + 1e-3 * ref.abs().max().item(), (err, stock_err)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_kernel_propagates_nan_like_torch(dtype, poisoned):
    x, wt, scale, shift = _operands(2, 64, 64, dtype, "cuda")
    x[0, :, 10, 20] = float("nan")
    x[1, 1, 40, 3] = float("inf")
    y = ops.stem_pool(x, wt, scale, shift)
    ref = _reference(x, wt, scale, shift)
    assert torch.equal(torch.isnan(y), torch.isnan(ref))


@requires_cuda
def test_cuda_falls_back_to_the_composition_elsewhere():
    x, wt, scale, shift = _operands(2, 32, 32, torch.bfloat16, "cuda")
    for args in ((x.contiguous(), wt, scale, shift),               # NCHW
                 (x.float(), wt.float(), scale, shift),            # fp32
                 (x, wt[:32], scale[:32], shift[:32])):            # 32 output channels
        y = ops.stem_pool(*args)
        ref = _reference(*args)
        assert (y.float() - ref).abs().max() <= 3e-2 * ref.abs().max()


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_plan_with_the_fused_stem_matches_torchvision(dtype, poisoned):
    ours, tv = _model(dtype, "cuda")
    resnet_ext.freeze(ours)
    x = torch.randn(4, 3, 224, 224, device="cuda").to(dtype).contiguous(memory_format=CL)
    fused, counts = _plan(ours, x, True)
    with torch.no_grad():
        ref = tv(x.float())
        tv16 = tv.to(dtype).to(memory_format=CL)(x)
    assert counts.get("stem_pool") == 1 and torch.isfinite(fused.float()).all()
    assert norm_err(fused.float(), ref) <= 1.25 * norm_err(tv16.float(), ref)


# ---- the CUDA kernel's tiling emulated on the CPU (experimental/stem_pool_kernels.cu, step by step) --------------

def _emulate_kernel(x, w, scale, shift):
    """stem_pool_kernel's arithmetic in torch: per 8x8 tile of pooled outputs, the 39x39x3 input patch (zeros
    outside the image), the A operand [304, 160] gathered row by row through the tap-offset table (rows past 289
    and taps past 147 zero), the fp32 GEMM with the weight repacked as [160, 64], then BN, ReLU and the 3x3/2
    pool over the 17x17 accumulators with the pool's padding skipped. Float64 sums stand in for the fp32 MMA."""
    tile, conv, rows, rows_pad, k_in, taps, k_pad = 8, 17, 289, 304, 39, 147, 160
    n_, _, h, w_ = x.shape
    oh, ow = (h - 1) // 2 + 1, (w_ - 1) // 2 + 1
    ph_, pw_ = (oh - 1) // 2 + 1, (ow - 1) // 2 + 1
    xs = x.permute(0, 2, 3, 1).double()  # NHWC
    b = torch.zeros(k_pad, 64, dtype=torch.float64)
    b[:taps] = w.double().permute(2, 3, 1, 0).reshape(taps, 64)
    tap_at = [((t // 3) // 7 * k_in + (t // 3) % 7) * 3 + t % 3 for t in range(taps)]
    y = torch.full((n_, ph_, pw_, 64), float("nan"), dtype=torch.float64)
    for n in range(n_):
        for ph0 in range(0, ph_, tile):
            for pw0 in range(0, pw_, tile):
                oh0, ow0 = 2 * ph0 - 1, 2 * pw0 - 1
                ih0, iw0 = 2 * oh0 - 3, 2 * ow0 - 3
                patch = torch.zeros(k_in, k_in, 3, dtype=torch.float64)
                for r in range(k_in):
                    for c in range(k_in):
                        if 0 <= ih0 + r < h and 0 <= iw0 + c < w_:
                            patch[r, c] = xs[n, ih0 + r, iw0 + c]
                flat = patch.reshape(-1)
                a = torch.zeros(rows_pad, k_pad, dtype=torch.float64)
                for row in range(rows):
                    base = (2 * (row // conv) * k_in + 2 * (row % conv)) * 3
                    a[row, :taps] = flat[[base + t for t in tap_at]]
                acc = (a @ b)[:rows].reshape(conv, conv, 64)
                act = torch.relu(acc * scale.double() + shift.double())
                for pi in range(tile):
                    for pj in range(tile):
                        if ph0 + pi >= ph_ or pw0 + pj >= pw_:
                            continue
                        best = torch.full((64,), float("-inf"), dtype=torch.float64)
                        for di in range(3):
                            for dj in range(3):
                                ci, cj = 2 * pi + di, 2 * pj + dj
                                if 0 <= oh0 + ci < oh and 0 <= ow0 + cj < ow:
                                    best = torch.maximum(best, act[ci, cj])
                        y[n, ph0 + pi, pw0 + pj] = best
    return y.permute(0, 3, 1, 2)


@pytest.mark.parametrize("n,h,w", [(1, 23, 23), (2, 9, 10), (1, 1, 1), (1, 40, 33)])
def test_kernel_tiling_emulated_matches_the_reference(n, h, w):
    """The kernel's tile, patch, gather and pool-window arithmetic (not its CUDA code, which only a GPU runs)
    against the float64 composition, on sizes with partial tiles, a single pixel and more than one tile a side."""
    x, wt, scale, shift = _operands(n, h, w, torch.float64, "cpu", seed=h * w)
    got = _emulate_kernel(x, wt, scale, shift)
    ref = _reference(x, wt, scale, shift)
    assert got.shape == ref.shape and not torch.isnan(got).any()
    assert (got - ref).abs().max() <= 1e-10 * ref.abs().max().clamp_min(1)
