"""resnet_ext::scale_shift_act_ (CPU): y = relu?(y * scale + shift (+ residual)) in place, the unfolded units of the
flat CPU forward. Against a float64 reference on random inputs in both layouts and odd sizes; a bfloat16 y bit for bit
as torch's own BN, add and ReLU compute it; NaN and inf pass through as torch's ops pass them; every bad argument is a
clear error naming it; opcheck."""
import pytest
import torch

from resnet_ext import ops


def reference(y, scale, shift, residual, relu):
    out = y.double() * scale.double().view(1, -1, 1, 1) + shift.double().view(1, -1, 1, 1)
    if residual is not None:
        out = out + residual.double()
    return torch.relu(out) if relu else out


SHAPES = [(1, 3, 5, 7), (2, 64, 1, 1), (1, 2048, 7, 7), (3, 17, 9, 4), (2, 256, 14, 14)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_matches_float64(shape, layout, with_residual, relu):
    g = torch.Generator().manual_seed(sum(shape))
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    y = torch.randn(*shape, generator=g).contiguous(memory_format=fmt)
    scale, shift = torch.randn(shape[1], generator=g), torch.randn(shape[1], generator=g)
    residual = torch.randn(*shape, generator=g).contiguous(memory_format=fmt) if with_residual else None
    expected = reference(y, scale, shift, residual, relu)
    out = ops.scale_shift_act_(y, scale, shift, residual, relu)
    assert out is y  # in place
    torch.testing.assert_close(out.double(), expected, rtol=1e-6, atol=1e-6)


def torch_bn_add_relu(y, bn, residual, relu):
    """What torchvision's modules compute: BN, then the residual added, then the ReLU, each op rounding to y's dtype."""
    out = bn(y)
    if residual is not None:
        out += residual
    return torch.relu_(out) if relu else out


# Odd plane sizes (7x5, 9x4) and channel counts (17, 33) exercise the vector loops' tails in both layouts.
BF16_SHAPES = [(1, 64, 56, 56), (2, 256, 14, 14), (1, 2048, 7, 7), (3, 17, 9, 4), (1, 33, 7, 5), (2, 512, 28, 28)]


@pytest.mark.parametrize("shape", BF16_SHAPES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("bn_dtype", [torch.bfloat16, torch.float32], ids=["bf16_bn", "fp32_bn"])
def test_bfloat16_is_torchs_bn_add_relu_bit_for_bit(shape, layout, with_residual, relu, bn_dtype):
    g = torch.Generator().manual_seed(sum(shape) + 7)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    c = shape[1]
    bn = torch.nn.BatchNorm2d(c).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1, generator=g), bn.running_var.uniform_(0.2, 3, generator=g)
        bn.weight.uniform_(0.3, 2, generator=g), bn.bias.uniform_(-1, 1, generator=g)
    bn = bn.to(bn_dtype)  # a bf16 model's BN, or fp32 statistics on a bf16 conv output (ATen's mixed case)
    y = (torch.randn(*shape, generator=g) * 3).bfloat16().contiguous(memory_format=fmt)
    residual = torch.randn(*shape, generator=g).bfloat16().contiguous(memory_format=fmt) if with_residual else None
    with torch.no_grad():
        expected = torch_bn_add_relu(y.clone(), bn, residual, relu)
        (scale,), (shift,) = ops.bn_affine_pairs([(torch.nn.Conv2d(c, c, 1).bfloat16(), bn)], conv_bias=False)
    out = ops.scale_shift_act_(y, scale, shift, residual, relu)
    assert out is y and out.dtype == torch.bfloat16
    assert torch.equal(out, expected), (out.float() - expected.float()).abs().max()


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_bfloat16_nan_and_inf_pass_through_like_torch(layout):
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    y = torch.randn(2, 40, 3, 3).contiguous(memory_format=fmt)
    y[0, 1, 1, 1], y[1, 2, 0, 0], y[1, 3, 2, 2] = float("nan"), float("inf"), -float("inf")
    y = y.bfloat16()
    r = torch.randn(2, 40, 3, 3).bfloat16().contiguous(memory_format=fmt)
    r[0, 5, 0, 0] = float("nan")
    scale, shift = torch.rand(40) + 0.5, torch.randn(40)
    expected = torch.relu((y.float() * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)).bfloat16() + r)
    out = ops.scale_shift_act_(y.clone(), scale, shift, r, True)
    torch.testing.assert_close(out, expected, equal_nan=True, rtol=0, atol=0)
    assert out[0, 1, 1, 1].isnan() and out[0, 5, 0, 0].isnan() and out[1, 2, 0, 0] == float("inf")
    assert out[1, 3, 2, 2] == 0


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_nan_and_inf_pass_through_like_torch(layout):
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    y = torch.randn(2, 8, 3, 3).contiguous(memory_format=fmt)
    y[0, 1, 1, 1], y[1, 2, 0, 0], y[1, 3, 2, 2] = float("nan"), float("inf"), -float("inf")
    scale, shift = torch.rand(8) + 0.5, torch.randn(8)
    expected = torch.relu(y * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1))
    out = ops.scale_shift_act_(y.clone(), scale, shift, None, True)
    torch.testing.assert_close(out, expected, equal_nan=True)
    assert out[0, 1, 1, 1].isnan() and out[1, 2, 0, 0] == float("inf") and out[1, 3, 2, 2] == 0


def test_empty_is_a_no_op():
    y = torch.empty(0, 4, 3, 3)
    assert ops.scale_shift_act_(y, torch.ones(4), torch.zeros(4), None, True) is y


@pytest.mark.parametrize("make, needle", [
    (lambda: (torch.randn(2, 4, 3), torch.ones(4), torch.zeros(4), None), "y must be 4-d"),
    (lambda: (torch.randn(1, 4, 3, 3).double(), torch.ones(4), torch.zeros(4), None), "y must be float32"),
    (lambda: (torch.randn(1, 4, 3, 3).half(), torch.ones(4), torch.zeros(4), None), "y must be float32 or bfloat16"),
    (lambda: (torch.randn(1, 4, 3, 3).bfloat16(), torch.ones(4), torch.zeros(4), torch.randn(1, 4, 3, 3)),
     "residual must match"),
    (lambda: (torch.randn(1, 4, 6, 6)[:, :, ::2, ::2], torch.ones(4), torch.zeros(4), None), "y must be contiguous"),
    (lambda: (torch.randn(1, 4, 3, 3), torch.ones(5), torch.zeros(4), None), "scale must be a float32 vector"),
    (lambda: (torch.randn(1, 4, 3, 3), torch.ones(4).double(), torch.zeros(4), None), "scale must be a float32"),
    (lambda: (torch.randn(1, 4, 3, 3), torch.ones(4), torch.zeros(4, 1), None), "shift must be a float32 vector"),
    (lambda: (torch.randn(1, 4, 3, 3), torch.ones(4), torch.zeros(4), torch.randn(1, 4, 3, 2)), "residual must match"),
    (lambda: (torch.randn(1, 4, 3, 3), torch.ones(4), torch.zeros(4),
              torch.randn(1, 4, 3, 3).contiguous(memory_format=torch.channels_last)), "residual must have y's layout"),
])
def test_bad_arguments_are_clear_errors(make, needle):
    y, scale, shift, residual = make()
    before = y.clone()
    with pytest.raises(RuntimeError, match=needle):
        ops.scale_shift_act_(y, scale, shift, residual, True)
    assert torch.equal(y, before)  # nothing written


def test_residual_must_not_be_y():
    y = torch.randn(1, 4, 3, 3)
    with pytest.raises(RuntimeError, match="residual must not be y itself"):
        ops.scale_shift_act_(y, torch.ones(4), torch.zeros(4), y, True)


@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck(with_residual, dtype):
    y = torch.randn(2, 6, 4, 5, dtype=dtype).contiguous(memory_format=torch.channels_last)
    r = torch.randn(2, 6, 4, 5, dtype=dtype).contiguous(memory_format=torch.channels_last) if with_residual else None
    torch.library.opcheck(torch.ops.resnet_ext.scale_shift_act_.default, (y, torch.randn(6), torch.randn(6), r, True))
