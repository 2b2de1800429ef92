"""resnet_ext::conv1x1 (CPU): relu?(conv1x1(x, stride) + bias (+ residual)) as one GEMM on resnet_ext's AVX-512
register tiles with the epilogue fused, the frozen flat forward's 1x1 units. Against a float64 reference on fresh
random inputs: every ResNet 1x1 layer shape (stride 1 and 2), batch 1, odd sizes (rows not a multiple of the tile's
six, fewer than one tile, one pixel, odd strided maps), many blocks of rows; float32 and bfloat16 (judged on torch's
own bf16 convolution's error); outputs poisoned (glibc's MALLOC_PERTURB_) so an unwritten element shows; NaN passes
through; every bad argument is a clear error; opcheck; and in the model: which units take it, the switch, a CPU
without the op, and torchvision's answer."""
import copy

import pytest
import torch
import torch.nn.functional as F

import resnet_ext
from resnet_ext import ops
from resnet_ext.engine import cpu, units
from conftest import frozen_pair, randomize_bn, rel_err, run_poisoned, tv_model

f32_only = pytest.mark.skipif(not ops.conv1x1_supported(torch.float32), reason="this CPU has no AVX-512")
bf16_only = pytest.mark.skipif(not ops.conv1x1_supported(torch.bfloat16), reason="this CPU has no AVX512-BF16")

# One chain of fp32 multiply-adds per output, as oneDNN's: 1e-6 to 6e-6 of the largest output on these inputs
# (C up to 2048); a wrong row, channel or panel is off by the output's own size.
TOL = 2e-5


def reference(x, w, b, residual, relu, stride):
    out = F.conv2d(x.double(), w.double(), b.double(), stride=stride)
    if residual is not None:
        out = out + residual.double()
    return torch.relu(out) if relu else out


def make(n, c, k, h, w, stride, seed, with_residual=False, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g).contiguous(memory_format=torch.channels_last)
    wt = torch.randn(k, c, 1, 1, generator=g) * (2 / c) ** 0.5
    b = torch.randn(k, generator=g) * 0.1
    oh, ow = (h - 1) // stride + 1, (w - 1) // stride + 1
    r = (torch.randn(n, k, oh, ow, generator=g).contiguous(memory_format=torch.channels_last)
         if with_residual else None)
    if dtype == torch.bfloat16:
        x, wt, r = x.bfloat16(), wt.bfloat16(), None if r is None else r.bfloat16()
    return x, wt, b, r


# (N, C, K, H, W, stride): resnet50's 1x1 shapes at 224x224 (heads, tails, downsamples), resnet18's downsamples, odd
# maps for the strided gather, rows not a multiple of 6 (1 to 5 left), a single pixel, odd and tiny C (fp32), and
# 13 x 56 x 56 rows (many blocks of rows).
SHAPES = [(1, 64, 64, 56, 56, 1), (1, 64, 256, 56, 56, 1), (1, 256, 64, 56, 56, 1), (1, 256, 128, 56, 56, 1),
          (1, 256, 512, 56, 56, 2), (1, 128, 512, 28, 28, 1), (1, 512, 128, 28, 28, 1), (1, 512, 256, 28, 28, 1),
          (1, 512, 1024, 28, 28, 2), (1, 256, 1024, 14, 14, 1), (1, 1024, 256, 14, 14, 1), (1, 1024, 512, 14, 14, 1),
          (1, 1024, 2048, 14, 14, 2), (1, 512, 2048, 7, 7, 1), (1, 2048, 512, 7, 7, 1), (2, 64, 128, 56, 56, 2),
          (1, 128, 256, 7, 9, 2), (3, 32, 64, 5, 3, 1), (1, 16, 192, 1, 1, 1), (2, 64, 64, 1, 5, 1),
          (1, 2, 64, 4, 4, 2), (13, 64, 64, 56, 56, 1)]
ODD_C = [(1, 3, 64, 9, 7, 1), (2, 17, 128, 5, 5, 2)]  # fp32 only: bf16 takes channel pairs


@f32_only
@pytest.mark.parametrize("shape", SHAPES + ODD_C, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_matches_float64(shape, with_residual, relu):
    *dims, stride = shape
    x, w, b, r = make(*dims, stride, seed=sum(shape), with_residual=with_residual)
    y = ops.conv1x1(x, ops.conv1x1_weight(w), b, r, relu, stride)
    ref = reference(x, w, b, r, relu, stride)
    assert y.dtype == torch.float32 and y.shape == ref.shape
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(y, ref) < TOL


@bf16_only
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_bf16_matches_float64_within_torchs_bf16_error(shape, with_residual, relu):
    """bf16 operands, fp32 sums of their exact products, rounded to bf16 once: against float64 on the same bf16
    operands, no worse than torch's own bf16 convolution (measured level with it, often bitwise equal) and below
    1e-2 of the largest output (half a bf16 ulp is 2e-3 of a value)."""
    *dims, stride = shape
    x, w, b, r = make(*dims, stride, seed=sum(shape), with_residual=with_residual, dtype=torch.bfloat16)
    y = ops.conv1x1(x, ops.conv1x1_weight(w), b, r, relu, stride)
    ref = reference(x, w, b, r, relu, stride)
    assert y.dtype == torch.bfloat16 and y.shape == ref.shape
    assert y.is_contiguous(memory_format=torch.channels_last)
    stock = F.conv2d(x, w, b.bfloat16(), stride=stride)
    stock = stock + r if r is not None else stock
    stock = torch.relu(stock) if relu else stock
    err, torch_err = rel_err(y, ref), rel_err(stock, ref)
    assert err < 1e-2 and err <= 1.5 * torch_err + 1e-3, (err, torch_err)


@bf16_only
def test_bf16_bias_may_be_bf16():
    x, w, b, r = make(2, 32, 64, 9, 7, 1, seed=5, with_residual=True, dtype=torch.bfloat16)
    wp = ops.conv1x1_weight(w)
    assert torch.equal(ops.conv1x1(x, wp, b.bfloat16(), r, True), ops.conv1x1(x, wp, b.bfloat16().float(), r, True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("threads", [1, 3, 8])
def test_any_number_of_threads(dtype, threads):
    """Few items for the threads (a 7x7 or smaller map) are split into smaller blocks of rows: every split covers
    every row once (the sums themselves do not depend on it)."""
    if not ops.conv1x1_supported(dtype):
        pytest.skip("this CPU does not run the op for this dtype")
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for n, c, k, h, w, s in [(1, 2048, 512, 7, 7, 1), (1, 64, 64, 8, 8, 1), (2, 32, 128, 3, 5, 2),
                                 (1, 16, 64, 1, 1, 1), (1, 64, 256, 13, 13, 1)]:
            x, wt, b, r = make(n, c, k, h, w, s, seed=n + c + k + h, with_residual=True, dtype=dtype)
            y = ops.conv1x1(x, ops.conv1x1_weight(wt), b, r, True, s)
            assert rel_err(y, reference(x, wt, b, r, True, s)) < (TOL if dtype == torch.float32 else 1e-2)
    finally:
        torch.set_num_threads(prev)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weight_packing(dtype):
    """Panels of 64 output channels, each contiguous: [K / 64, C, 64] (fp32) or [K / 64, C / 2, 64, 2] (bf16, the
    pair of channels 2i, 2i + 1 of one output channel adjacent)."""
    k, c = 192, 6
    w = torch.randn(k, c, 1, 1).to(dtype)
    p = ops.conv1x1_weight(w)
    assert p.dtype == dtype and p.is_contiguous()
    wm = w.view(k, c)
    if dtype == torch.float32:
        assert p.shape == (3, c, 64)
        assert all(torch.equal(p[i, ch, j], wm[64 * i + j, ch]) for i, ch, j in [(0, 0, 0), (2, 5, 63), (1, 3, 7)])
    else:
        assert p.shape == (3, c // 2, 64, 2)
        assert all(torch.equal(p[i, ch // 2, j, ch % 2], wm[64 * i + j, ch])
                   for i, ch, j in [(0, 0, 0), (2, 5, 63), (1, 3, 7)])
    w_cl = w.contiguous(memory_format=torch.channels_last)  # a 1x1 weight's layouts are the same bytes
    assert torch.equal(ops.conv1x1_weight(w_cl), p)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nan_and_inf_propagate(dtype):
    """A NaN input makes its output pixel NaN in every channel, ReLU included (max(NaN, 0) is NaN, as torch.relu);
    an inf input gives +-inf there (ReLU: inf or 0) as the direct convolution: the same NaN and inf pattern."""
    if not ops.conv1x1_supported(dtype):
        pytest.skip("this CPU does not run the op for this dtype")
    x, w, b, _ = make(1, 16, 64, 5, 5, 1, seed=3, dtype=dtype)
    x[0, 5, 2, 2] = float("nan")
    x[0, 7, 1, 3] = float("inf")
    y = ops.conv1x1(x, ops.conv1x1_weight(w), b, None, True)
    ref = F.conv2d(x.float(), w.float(), b).relu()
    assert y[0, :, 2, 2].isnan().all() and ref[0, :, 2, 2].isnan().all()
    assert ref[0, :, 1, 3].isinf().any()  # the test means something
    assert torch.equal(y.isnan(), ref.isnan()) and torch.equal(y.isinf(), ref.isinf())


_POISON_SCRIPT = r"""
import torch
from resnet_ext import ops
torch.manual_seed(0)
for dtype in (torch.float32, torch.bfloat16):
    if not ops.conv1x1_supported(dtype):
        continue
    for n, c, k, h, w, s in [(1, 16, 64, 13, 11, 1), (2, 64, 128, 30, 30, 2), (1, 512, 2048, 7, 7, 1)]:
        x = torch.randn(n, c, h, w).contiguous(memory_format=torch.channels_last).to(dtype)
        wt = (torch.randn(k, c, 1, 1) * (2 / c) ** 0.5).to(dtype)
        b = torch.randn(k)
        y = ops.conv1x1(x, ops.conv1x1_weight(wt), b, None, False, s)
        ref = torch.nn.functional.conv2d(x.double(), wt.double(), b.double(), stride=s)
        err = ((y.double() - ref).abs().max() / ref.abs().max()).item()
        assert torch.isfinite(y).all() and err < 1e-2, err
print("ok")
"""


@f32_only
def test_every_output_written_under_poisoned_allocations():
    """glibc fills every fresh heap allocation with a byte pattern (MALLOC_PERTURB_): an output element the op did
    not write would keep it and fail the error bound (blocks glibc maps anew come zeroed, which fails it too)."""
    run_poisoned(_POISON_SCRIPT)


def _args(dtype=torch.float32, **kw):
    x, w, b, r = make(1, 16, 64, 6, 6, 1, seed=1, with_residual=True, dtype=dtype)
    a = dict(x=x, w=ops.conv1x1_weight(w), bias=b, residual=r, stride=1)
    a.update(kw)
    return a


def _cl(*shape, dtype=torch.float32):
    return torch.randn(*shape).to(dtype).contiguous(memory_format=torch.channels_last)


@f32_only
@pytest.mark.parametrize("change, needle", [
    (lambda: dict(x=torch.randn(16, 6, 6)), "x must be a 4-d float32 or bfloat16"),
    (lambda: dict(x=_cl(1, 16, 6, 6).double()), "x must be a 4-d float32 or bfloat16"),
    (lambda: dict(x=torch.randn(1, 16, 6, 6)), "x must be channels_last"),
    (lambda: dict(w=torch.randn(1, 8, 64)), r"w must be the contiguous packed float32 weight \[K / 64, C, 64\]"),
    (lambda: dict(w=torch.randn(1, 64, 16).transpose(1, 2)), "w must be the contiguous packed"),
    (lambda: dict(w=torch.randn(1, 16, 64).bfloat16()), "w must be the contiguous packed float32"),
    (lambda: dict(bias=torch.randn(63)), "bias must be a float32 vector of the output channels, a positive multi"),
    (lambda: dict(bias=torch.randn(64).double()), "bias must be a float32 vector"),
    (lambda: dict(bias=torch.randn(8, 8)), "bias must be a float32 vector"),
    (lambda: dict(residual=_cl(1, 64, 6, 5)), "residual must be a channels_last float32 CPU tensor"),
    (lambda: dict(residual=torch.randn(1, 64, 6, 6)), "residual must be a channels_last float32"),
    (lambda: dict(residual=_cl(1, 64, 6, 6).bfloat16()), "residual must be a channels_last float32"),
    (lambda: dict(stride=0), "stride must be positive, got 0"),
    (lambda: dict(stride=2), r"residual must be .* output's shape \[1, 64, 3, 3\]"),
])
def test_bad_arguments_are_clear_errors(change, needle):
    a = _args(**change())
    with pytest.raises(RuntimeError, match=needle):
        ops.conv1x1(a["x"], a["w"], a["bias"], a["residual"], True, a["stride"])


@bf16_only
@pytest.mark.parametrize("change, needle", [
    (lambda: dict(x=_cl(1, 15, 6, 6, dtype=torch.bfloat16)), "x must have a positive, even number of channels"),
    (lambda: dict(w=torch.zeros(1, 16, 64, dtype=torch.bfloat16)), r"packed bfloat16 weight \[K / 64, C / 2, 64, 2\]"),
    (lambda: dict(w=ops.conv1x1_weight(torch.randn(64, 16, 1, 1))), "w must be the contiguous packed bfloat16"),
    (lambda: dict(bias=torch.randn(64).half()), "bias must be a float32 or bfloat16 vector"),
    (lambda: dict(residual=_cl(1, 64, 6, 6)), "residual must be a channels_last bfloat16"),
])
def test_bf16_bad_arguments_are_clear_errors(change, needle):
    a = _args(torch.bfloat16, **change())
    with pytest.raises(RuntimeError, match=needle):
        ops.conv1x1(a["x"], a["w"], a["bias"], a["residual"], True, a["stride"])


def test_conv1x1_supported_agrees_with_the_kernels_cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags")).split()
    except (OSError, StopIteration):
        pytest.skip("no /proc/cpuinfo")
    assert ops.conv1x1_supported(torch.float32) == ("avx512f" in flags)
    assert ops.conv1x1_supported(torch.bfloat16) == ("avx512f" in flags and "avx512_bf16" in flags)
    assert ops.conv1x1_supported(torch.bfloat16) == ops.winograd_bf16_supported()
    assert not ops.conv1x1_supported(torch.float16) and not ops.conv1x1_supported(torch.float64)


@pytest.mark.skipif(ops.conv1x1_supported(torch.float32), reason="this CPU has AVX-512")
def test_without_avx512_is_a_clear_error():
    a = _args()
    with pytest.raises(RuntimeError, match="needs a CPU with AVX-512"):
        ops.conv1x1(a["x"], a["w"], a["bias"], a["residual"], True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_residual", [False, True])
def test_opcheck(dtype, with_residual):
    if not ops.conv1x1_supported(dtype):
        pytest.skip("this CPU does not run the op for this dtype")
    a = _args(dtype)
    torch.library.opcheck(torch.ops.resnet_ext.conv1x1.default,
                          (a["x"], a["w"], a["bias"], a["residual"] if with_residual else None, True, 1))


# ---- conv1x1_add_: the residual written over ------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [s for s in SHAPES if s[0] * s[3] * s[4] <= 5000],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("relu", [False, True])
def test_add_in_place_is_the_op_with_its_residual(dtype, shape, relu):
    """conv1x1_add_(out, ...) writes into out what conv1x1(..., residual=out) returns, bit for bit, and returns
    out; the residual read is the value before the write (each element read just before it is overwritten)."""
    if not ops.conv1x1_supported(dtype):
        pytest.skip("this CPU does not run the op for this dtype")
    n, c, k, h, w, stride = shape
    x, wt, b, r = make(n, c, k, h, w, stride, seed=7, with_residual=True, dtype=dtype)
    pw = ops.conv1x1_weight(wt)
    expected = ops.conv1x1(x, pw, b, r, relu, stride)
    out = r.clone()
    ret = ops.conv1x1_add_(out, x, pw, b, relu, stride)
    assert ret.data_ptr() == out.data_ptr() and torch.equal(out, expected)
    assert not torch.equal(out, r)  # written


def _add_args(dtype=torch.float32, **kw):
    a = _args(dtype)
    a["out"] = a.pop("residual").clone()
    a.update(kw)
    return a


@f32_only
@pytest.mark.parametrize("change, needle", [
    (lambda: dict(out=_cl(1, 64, 6, 5)), "conv1x1_add_: out must be a channels_last float32 CPU tensor"),
    (lambda: dict(out=torch.randn(1, 64, 6, 6)), "conv1x1_add_: out must be a channels_last float32"),
    (lambda: dict(out=_cl(1, 64, 6, 6).bfloat16()), "conv1x1_add_: out must be a channels_last float32"),
    (lambda: dict(x=torch.randn(1, 16, 6, 6)), "conv1x1_add_: x must be channels_last"),
    (lambda: dict(stride=2), r"conv1x1_add_: out must be .* output's shape \[1, 64, 3, 3\]"),
])
def test_add_in_place_bad_arguments_are_clear_errors(change, needle):
    a = _add_args(**change())
    with pytest.raises(RuntimeError, match=needle):
        ops.conv1x1_add_(a["out"], a["x"], a["w"], a["bias"], True, a["stride"])


@f32_only
def test_add_in_place_refuses_an_out_that_overlaps_what_it_reads():
    """Written in place over x (C == K, stride 1) the GEMM would read sums it has already written: a clear error,
    for out being x and for out a view of x's storage; out sharing memory with the bias too."""
    x, wt, b, _ = make(1, 64, 64, 6, 6, 1, seed=3)
    pw = ops.conv1x1_weight(wt)
    with pytest.raises(RuntimeError, match="conv1x1_add_: out must not overlap x, w or bias"):
        ops.conv1x1_add_(x, x, pw, b, True)
    buf = torch.randn(2 * 36 * 64)
    half = buf[18 * 64: 54 * 64].view(1, 6, 6, 64).permute(0, 3, 1, 2)  # half of x's pixels and half beyond
    xs = buf[: 36 * 64].view(1, 6, 6, 64).permute(0, 3, 1, 2)
    xs.copy_(x)
    with pytest.raises(RuntimeError, match="must not overlap"):
        ops.conv1x1_add_(half, xs, pw, b, True)
    flat = torch.randn(64 * 36 + 64)
    out = flat[64:].view(1, 6, 6, 64).permute(0, 3, 1, 2)
    with pytest.raises(RuntimeError, match="must not overlap"):
        ops.conv1x1_add_(out, x, pw, flat[64 * 35: 64 * 36], True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_add_in_place_opcheck(dtype):
    if not ops.conv1x1_supported(dtype):
        pytest.skip("this CPU does not run the op for this dtype")
    a = _add_args(dtype)
    torch.library.opcheck(torch.ops.resnet_ext.conv1x1_add_.default, (a["out"], a["x"], a["w"], a["bias"], True, 1))


# ---- In the frozen model -------------------------------------------------------------------------------------


@f32_only
@pytest.mark.parametrize("arch, shape, layout, expected", [
    ("resnet50", (1, 3, 224, 224), "channels_last", 30),  # all but the 103M-MAC ones: downsamples, 3 first heads
    ("resnet50", (1, 3, 224, 224), "nchw", 30),           # the stem's output is channels_last: so are the units'
    ("resnet50", (2, 3, 224, 224), "channels_last", 1),   # only layer 1's 64 -> 64 (26M MACs): the rest is more
    ("resnet18", (2, 3, 64, 80), "channels_last", 3),     # the three downsamples, stride 2
])
def test_frozen_model_takes_conv1x1_where_it_pays_and_matches_torchvision(arch, shape, layout, expected, no_amx):
    ours, tv = frozen_pair(arch)
    x = torch.randn(*shape)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = tv(x)
        for _ in range(2):  # record, replay
            units.reset_path_counts()
            y = ours(x)
            assert resnet_ext.path_counts().get("conv1x1", 0) == expected, resnet_ext.path_counts()
            assert rel_err(y, ref) < 1e-4


@bf16_only
@pytest.mark.parametrize("arch, shape, expected", [
    ("resnet50", (1, 3, 224, 224), 36),
    ("resnet50", (4, 3, 224, 224), 30),  # all but the 411M-MAC ones: the stride-2 downsamples, 3 first heads
    ("resnet18", (2, 3, 64, 80), 3),
])
def test_frozen_bf16_model_with_conv1x1_equals_it_without(arch, shape, expected, no_amx, monkeypatch):
    """freeze(dtype=torch.bfloat16): the op's units against the same model with every 1x1 on oneDNN (the switch
    off), both against float64: within torchvision's own bf16 error (on AVX512-BF16 both sum the same dot products
    in the same order; measured bitwise equal on Zen 5). conv_direct off: it would take the strided 1x1s at batch 1."""
    ours, tv = frozen_pair(arch, torch.bfloat16)
    x = torch.randn(*shape).contiguous(memory_format=torch.channels_last)
    monkeypatch.setattr(cpu, "DIRECT_1X1", False)
    with torch.no_grad():
        ref = copy.deepcopy(tv).double()(x.double())
        tv_err = rel_err(copy.deepcopy(tv).bfloat16()(x.bfloat16()), ref)
        out = {}
        for on in (True, False):
            assert resnet_ext.cpu_conv1x1(on) is True
            try:
                units.reset_path_counts()
                out[on] = ours(x)
                assert resnet_ext.path_counts().get("conv1x1", 0) == (expected if on else 0)
            finally:
                resnet_ext.cpu_conv1x1(True)
    assert rel_err(out[True], ref) <= 2 * tv_err, (rel_err(out[True], ref), tv_err)
    assert rel_err(out[True], out[False]) <= tv_err


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_frozen_tails_write_over_their_residual_with_the_same_bits(dtype, no_amx, monkeypatch):
    """The plan's 1x1 tails on the op add the residual in place (conv1x1_add_): the logits bitwise those of the
    out-of-place op (CONV1X1_IN_PLACE off), record and replay, and the input left as it was."""
    if not ops.conv1x1_supported(dtype):
        pytest.skip("this CPU does not run the op for this dtype")
    ours, _ = frozen_pair("resnet50", None if dtype == torch.float32 else torch.bfloat16)
    x = torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    x0 = x.clone()
    calls = []
    add = ops.conv1x1_add_
    monkeypatch.setattr(ops, "conv1x1_add_", lambda *a, **k: calls.append(1) or add(*a, **k))
    with torch.no_grad():
        out = {}
        for in_place in (True, False):
            monkeypatch.setattr(cpu, "CONV1X1_IN_PLACE", in_place)
            calls.clear()
            out[in_place] = [ours(x) for _ in range(2)]
            assert len(calls) == (2 * 16 if in_place else 0)  # resnet50's 16 tails, each forward
    assert all(torch.equal(y, out[True][0]) for y in out[True] + out[False])
    assert torch.equal(x, x0)


@f32_only
def test_switch_off_and_on_again(no_amx):
    """cpu_conv1x1(False) holds from the next forward of an input size already planned, and back on again."""
    ours, tv = frozen_pair("resnet50")
    x = torch.randn(1, 3, 96, 96).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = tv(x)
        ours(x)
        assert resnet_ext.cpu_conv1x1() is True
        try:
            assert resnet_ext.cpu_conv1x1(False) is True
            units.reset_path_counts()
            y = ours(x)
            assert "conv1x1" not in resnet_ext.path_counts() and rel_err(y, ref) < 1e-4
        finally:
            assert resnet_ext.cpu_conv1x1(True) is False
        units.reset_path_counts()
        ours(x)
        assert resnet_ext.path_counts().get("conv1x1", 0) > 0


@f32_only
def test_units_the_op_cannot_take_stay_on_onednn(no_amx):
    """width_per_group=40: heads of 40, 80 and 160 output channels (not multiples of the op's 64-channel panels)
    run on oneDNN; the other 1x1 convs take the op."""
    ours, tv = frozen_pair("resnet50", width_per_group=40)
    x = torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        units.reset_path_counts()
        y = ours(x)
    # 36 1x1 convs: the heads of layers 1-3 have K = 40, 80, 160 (13 heads, oneDNN); layer 4's 3 heads (K = 320),
    # the 16 tails and the 4 downsamples (256 .. 2048 channels) take the op.
    assert resnet_ext.path_counts().get("conv1x1", 0) == 23, resnet_ext.path_counts()
    assert rel_err(y, tv(x)) < 1e-4


@bf16_only
def test_frozen_bf16_plan_leaves_1x1_convs_to_onednn_on_amx_cpus(monkeypatch):
    """Where oneDNN has AMX tiles its bf16 convolutions run on them: the plan takes no bf16 conv1x1 unit."""
    monkeypatch.setattr(cpu, "AMX_BF16", True)
    ours, tv = frozen_pair("resnet18", torch.bfloat16)
    x = torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        units.reset_path_counts()
        y = ours(x)
    assert "conv1x1" not in resnet_ext.path_counts(), resnet_ext.path_counts()
    assert rel_err(y, tv(x)) < 5e-2


def test_plan_without_the_op_on_this_cpu(monkeypatch):
    """A CPU the op does not run on (no AVX-512) gets oneDNN's convolution for every 1x1 unit, never an error."""
    monkeypatch.setattr(ops, "conv1x1_supported", lambda dtype: False)
    ours, tv = frozen_pair("resnet18")
    x = torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        units.reset_path_counts()
        y = ours(x)
    assert "conv1x1" not in resnet_ext.path_counts(), resnet_ext.path_counts()
    assert rel_err(y, tv(x)) < 1e-4


# ---- Cases found in review: each crashed where torchvision runs ------------------------------------------------


def _prune(tv, block, k):
    """Cut block.conv1's output channels to k through `.data` (with bn1's and conv2's matching channels), the way a
    channel-pruning tool does: the modules' attributes (out_channels, num_features) keep their old values."""
    b = tv.layer1[block] if isinstance(block, int) else block
    with torch.no_grad():
        b.conv1.weight.data = b.conv1.weight.data[:k].clone()
        for t in (b.bn1.weight, b.bn1.bias, b.bn1.running_mean, b.bn1.running_var):
            t.data = t.data[:k].clone()
        b.conv2.weight.data = b.conv2.weight.data[:, :k].clone()
    return tv


@pytest.mark.parametrize("dtype", [None, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("k", [48, 63])  # layer 1's first head: not a multiple of 64; odd (bf16 takes pairs)
def test_weights_pruned_through_data_before_freeze(dtype, k, no_amx, monkeypatch):
    """The plan's rules read the convs' attributes; a fold whose weight they do not describe runs on oneDNN's
    convolution (which takes it as torchvision's does), never on resnet_ext's own ops (conv_direct's strided 1x1s
    off: the count is conv1x1's)."""
    if dtype is not None and not ops.conv1x1_supported(dtype):
        pytest.skip("this CPU does not run the op for this dtype")
    runs_op = ops.conv1x1_supported(torch.float32)  # without AVX-512 every unit is oneDNN's (the answer still checked)
    monkeypatch.setattr(cpu, "DIRECT_1X1", False)
    tv = _prune(randomize_bn(tv_model("resnet50", num_classes=10)).eval(), 0, k)
    x = torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    ours = resnet_ext.freeze(resnet_ext.from_torchvision(copy.deepcopy(tv)), dtype=dtype)
    with torch.no_grad():
        ref = tv(x)
        units.reset_path_counts()
        y = ours(x)
    counts = resnet_ext.path_counts()
    assert counts.get("conv1x1", 0) == (35 if runs_op else 0), counts
    assert counts.get("onednn_prepacked", 0) >= 2, counts  # conv1, conv2
    assert rel_err(y, ref) < (1e-4 if dtype is None else 3e-2)


@f32_only
def test_a_larger_kernel_behind_a_1x1_conv_s_attributes(no_amx):
    """A 2x2 weight swapped into a 1x1 stride-2 downsample through `.data` (kernel_size stays (1, 1)): on an even
    map the shapes still agree and torchvision runs it; so does the frozen model, on oneDNN for that unit."""
    tv = randomize_bn(tv_model("resnet18", num_classes=10)).eval()
    with torch.no_grad():
        tv.layer2[0].downsample[0].weight.data = torch.randn(128, 64, 2, 2) * 0.05
    ours = resnet_ext.freeze(resnet_ext.from_torchvision(copy.deepcopy(tv)))
    x = torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        units.reset_path_counts()
        y = ours(x)
        assert resnet_ext.path_counts().get("conv1x1", 0) == 2, resnet_ext.path_counts()  # layers 3-4's
        assert rel_err(y, tv(x)) < 1e-4


@f32_only
@pytest.mark.parametrize("arch, size, own", [("resnet50", 64, "conv1x1"), ("resnet18", 224, "winograd")])
def test_an_identity_the_residual_add_broadcasts(arch, size, own, no_amx):
    """layer2's downsample with a stride as large as its map gives a (N, C, 1, 1) identity, which torchvision's
    `out += identity` broadcasts: the tails on resnet_ext's own ops (resnet50's 1x1, resnet18's 3x3 by Winograd)
    add it after the op, as there, instead of rejecting it."""
    tv = randomize_bn(tv_model(arch, num_classes=10)).eval()
    tv.layer2[0].downsample[0].stride = (size, size)
    ours = resnet_ext.freeze(resnet_ext.from_torchvision(copy.deepcopy(tv)))
    x = torch.randn(1, 3, size, size).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = tv(x)
        units.reset_path_counts()
        y = ours(x)
    assert resnet_ext.path_counts().get(own, 0) > 0, resnet_ext.path_counts()
    assert rel_err(y, ref) < 1e-4


def test_weight_packing_is_always_a_copy():
    """Also where the permute is already contiguous (one input channel in fp32, one pair in bf16)."""
    for w in (torch.randn(64, 1, 1, 1), torch.randn(64, 2, 1, 1).bfloat16()):
        p = ops.conv1x1_weight(w)
        assert p.untyped_storage().data_ptr() != w.untyped_storage().data_ptr()


@f32_only
def test_empty_maps():
    """No rows: an empty output of the right shape, and the residual's expected shape computed as the output's."""
    x = torch.randn(1, 16, 0, 4).contiguous(memory_format=torch.channels_last)
    w = ops.conv1x1_weight(torch.randn(64, 16, 1, 1))
    r = torch.randn(1, 64, 0, 2).contiguous(memory_format=torch.channels_last)
    y = ops.conv1x1(x, w, torch.randn(64), r, True, 2)
    assert y.shape == (1, 64, 0, 2)
