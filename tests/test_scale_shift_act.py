"""resnet_ext::scale_shift_act_ (CPU): y = relu?(y * scale + shift (+ residual)) in place, the unfolded units of the
flat CPU forward. Against a float64 reference on random inputs in both layouts and odd sizes; NaN and inf pass
through as torch's ops pass them; every bad argument is a clear error naming it; opcheck."""
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
    (lambda: (torch.randn(1, 4, 3, 3).bfloat16(), torch.ones(4), torch.zeros(4), None), "y must be float32"),
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
def test_opcheck(with_residual):
    y = torch.randn(2, 6, 4, 5).contiguous(memory_format=torch.channels_last)
    r = torch.randn(2, 6, 4, 5).contiguous(memory_format=torch.channels_last) if with_residual else None
    torch.library.opcheck(torch.ops.resnet_ext.scale_shift_act_.default, (y, torch.randn(6), torch.randn(6), r, True))
