"""resnet_ext::max_pool_nhwc (NHWC max pool without indices): equal to F.max_pool2d on every path, NaN, inf and the
sign of zero as torch; its CPU kernel (every build; channels_last fp32/bf16 on AVX-512 CPUs) on odd sizes and
channel counts; the CUDA kernel (built only with RESNET_EXT_EXPERIMENTAL=1, opt-in through the models' switch)
against torch on odd sizes, every dtype, poisoned outputs. In a default build: the switch refuses, naming the build
flag."""
import pytest
import torch
import torch.nn.functional as F

import resnet_ext
from conftest import requires_cuda, requires_experimental

op = torch.ops.resnet_ext.max_pool_nhwc
CASES = [  # (N, C, H, W), kernel, stride, padding, dilation
    ((2, 64, 112, 112), 3, 2, 1, 1), ((1, 64, 113, 111), 3, 2, 1, 1), ((3, 16, 9, 7), 2, 2, 0, 1),
    ((1, 8, 5, 5), 3, 1, 1, 1), ((2, 24, 11, 10), 3, 2, 1, 2), ((1, 64, 1, 1), 1, 1, 0, 1),
    ((4, 32, 6, 6), (3, 2), (1, 2), (1, 0), 1),
    # the CPU kernel's channel blocks (128 channels) and vector tails (16); every block width of 1 to 8 vectors
    ((1, 3, 10, 9), 3, 2, 1, 1), ((2, 17, 7, 8), 3, 2, 1, 1), ((1, 130, 6, 5), 3, 1, 1, 1), ((1, 272, 4, 4), 2, 2, 0, 1),
    ((1, 40, 5, 6), 3, 2, 1, 1), ((1, 80, 4, 5), 3, 1, 1, 1), ((1, 96, 5, 4), 2, 2, 0, 1), ((1, 112, 3, 3), 3, 1, 1, 1),
    ((1, 200, 5, 5), 3, 2, 1, 1),
    # ambiguous strides (1x1 maps, 1 channel) with larger outputs: torch's NCHW output, not NHWC order
    ((1, 64, 1, 1), 2, 1, 1, 1), ((2, 16, 1, 1), 4, 1, 2, 1), ((2, 1, 5, 6), 3, 1, 1, 1),
]


def _pair(v):
    return [v, v] if isinstance(v, int) else list(v)


def _args(k, s, p, d):
    return _pair(k), _pair(s), _pair(p), _pair(d)


def _input(shape, dtype, device, cl=True, special=True):
    x = torch.randn(shape, device=device).to(dtype)
    if special and x.numel() > 8:
        flat = x.view(-1)
        flat[3], flat[5], flat[7] = float("nan"), float("inf"), float("-inf")
    return x.contiguous(memory_format=torch.channels_last) if cl else x


def _same(y, ref):
    assert y.shape == ref.shape and y.dtype == ref.dtype
    assert torch.equal(torch.isnan(y), torch.isnan(ref))
    assert torch.equal(torch.nan_to_num(y), torch.nan_to_num(ref))
    numbers = ~torch.isnan(ref)  # (a NaN's sign and payload are not torch's contract: its bf16 pool makes its own)
    assert torch.equal(torch.signbit(y)[numbers], torch.signbit(ref)[numbers])  # -0 against +0: the same tap wins


@pytest.mark.skipif(resnet_ext.ops.EXPERIMENTAL, reason="a default build's refusal")
def test_default_build_refuses_the_switch():
    assert resnet_ext.nhwc_max_pool() is False
    with pytest.raises(RuntimeError, match="RESNET_EXT_EXPERIMENTAL=1"):
        resnet_ext.nhwc_max_pool(True)
    assert resnet_ext.nhwc_max_pool(False) is False  # turning it off is always allowed


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("cl", [True, False], ids=["channels_last", "nchw"])
def test_equals_torch_on_the_cpu(case, cl):
    shape, *rest = case
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        x = _input(shape, dtype, "cpu", cl)
        y, ref = op(x, *_args(*rest)), F.max_pool2d(x, *_args(*rest))
        _same(y, ref)
        assert y.stride() == ref.stride(), (y.stride(), ref.stride())  # torch's layout (a 1x1 map: NCHW strides)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_kernel_keeps_torchs_choice_among_equal_values(dtype):
    """Zeros of both signs, infinities and NaN in every window: the first of equal maxima, a NaN wherever one was."""
    g = torch.Generator().manual_seed(1)
    pick = torch.randint(0, 5, (2, 40, 15, 13), generator=g)
    values = torch.tensor([0.0, -0.0, float("-inf"), float("nan"), 1.0])
    x = values[pick].to(dtype).contiguous(memory_format=torch.channels_last)
    for args in (([3, 3], [2, 2], [1, 1], [1, 1]), ([2, 3], [1, 2], [1, 0], [2, 1])):
        _same(op(x, *args), F.max_pool2d(x, *args))


def test_opcheck_and_torchs_errors():
    x = _input((2, 16, 8, 8), torch.float32, "cpu", special=False)  # opcheck compares outputs: no NaN
    torch.library.opcheck(op.default, (x, [3, 3], [2, 2], [1, 1], [1, 1]))
    with pytest.raises(RuntimeError, match="pad should be at most half of effective kernel size"):
        op(x, [3, 3], [2, 2], [2, 2], [1, 1])


@requires_experimental
def test_models_switch():
    assert resnet_ext.nhwc_max_pool() is False  # off by default (unverified on a GPU)
    with pytest.raises(TypeError, match="nhwc_max_pool: enabled must be True or False"):
        resnet_ext.nhwc_max_pool(1)
    model = resnet_ext.resnet18(num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        previous = resnet_ext.nhwc_max_pool(True)
        try:
            assert torch.equal(model(x), ref)  # the switch is CUDA's: a CPU input is pooled as without it
        finally:
            resnet_ext.nhwc_max_pool(previous)


@requires_experimental
@requires_cuda
@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_cuda_kernel_equals_torch(case, dtype):
    shape, *rest = case
    x = _input(shape, dtype, "cuda")
    ref = F.max_pool2d(x, *_args(*rest))
    poison = torch.full_like(ref, float("nan"))  # freed just before: the op's output likely reuses its memory
    del poison
    _same(op(x, *_args(*rest)), ref)
    for fallback in (x.contiguous(), x[:, : shape[1] - 1]):  # NCHW, channels not a multiple of the vector
        _same(op(fallback, *_args(*rest)), F.max_pool2d(fallback, *_args(*rest)))


@requires_experimental
@requires_cuda
def test_cuda_model_with_the_switch_matches():
    torch.manual_seed(0)
    model = resnet_ext.resnet50(num_classes=10).cuda().to(torch.bfloat16).eval()
    x = torch.randn(4, 3, 96, 96, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = model(x)
        previous = resnet_ext.nhwc_max_pool(True)
        try:
            y = model(x)
        finally:
            resnet_ext.nhwc_max_pool(previous)
    assert torch.equal(y, ref)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_models_pool_of_an_nchw_map_is_torchs(case):
    """`ops.max_pool` (the models' pool) pools an NCHW map through channels_last and back: torch's values, NaN and
    signed zeros, and torch's NCHW strides (a 1x1 output too, where channels_last strides would differ)."""
    shape, *rest = case
    pool = torch.nn.MaxPool2d(*_args(*rest))
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        x = _input(shape, dtype, "cpu", cl=False)
        with torch.no_grad():
            y, ref = resnet_ext.ops.max_pool(pool, x), F.max_pool2d(x, *_args(*rest))
        _same(y, ref)
        assert y.stride() == ref.stride(), (y.stride(), ref.stride())
    for size in ((2, 64, 2, 2), (1, 64, 1, 2)):  # 1x1 outputs
        x = torch.randn(size)
        y = resnet_ext.ops.max_pool(torch.nn.MaxPool2d(3, 2, 1), x)
        assert torch.equal(y, F.max_pool2d(x, 3, 2, 1)) and y.stride() == (64, 1, 1, 1)
