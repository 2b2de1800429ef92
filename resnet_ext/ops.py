"""The resnet_ext:: ops as Python functions, with their fake (meta) kernels and autograd.

`conv_bn_act(x, weight, bias, residual, stride, padding, dilation, relu, groups)` computes
relu?(conv(x, weight) + bias + residual) with BatchNorm already folded into weight and bias (see `fold_bn`).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from ._C_loader import _C

IntPair = Union[int, Sequence[int]]


def _pair(v: IntPair) -> list:
    return [int(v), int(v)] if isinstance(v, int) else [int(v[0]), int(v[1])]


def conv_bn_act(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, residual: Optional[Tensor] = None,
                stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1, relu: bool = True,
                groups: int = 1) -> Tensor:
    """relu?(conv2d(x, weight, bias, stride, padding, dilation, groups) + residual) in one op (one fused kernel
    on CUDA where one applies, the stock ATen composition elsewhere). Differentiable."""
    return torch.ops.resnet_ext.conv_bn_act(x, weight, bias, residual, _pair(stride), _pair(padding),
                                            _pair(dilation), relu, groups)


def _memory_format_of(x: Tensor) -> torch.memory_format:
    # The same rule as ATen's Tensor::suggest_memory_format, which the real kernels follow.
    return torch._prims_common.suggest_memory_format(x)


@torch.library.register_fake("resnet_ext::conv_bn_act")
def _conv_bn_act_fake(x, weight, bias, residual, stride, padding, dilation, relu, groups=1):
    torch._check(x.dim() == 4, lambda: f"conv_bn_act: x must be a 4-D tensor (N, C, H, W), got {x.dim()}-D")
    torch._check(weight.dim() == 4, lambda: f"conv_bn_act: weight must be a 4-D tensor, got {weight.dim()}-D")
    for name, t in (("weight", weight), ("bias", bias), ("residual", residual)):
        if t is not None:
            torch._check(t.device == x.device, lambda: f"conv_bn_act: {name} must be on x's device ({x.device}), "
                                                       f"got {t.device}")
            torch._check(t.dtype == x.dtype, lambda: f"conv_bn_act: {name} must have x's dtype ({x.dtype}), "
                                                     f"got {t.dtype}")
    torch._check(weight.shape[1] * groups == x.shape[1],
                 lambda: f"conv_bn_act: channel mismatch: x has {x.shape[1]} channels, weight expects "
                         f"{weight.shape[1] * groups}")
    n, _, h, w = x.shape
    k, _, r, s = weight.shape
    p = (h + 2 * padding[0] - dilation[0] * (r - 1) - 1) // stride[0] + 1
    q = (w + 2 * padding[1] - dilation[1] * (s - 1) - 1) // stride[1] + 1
    if residual is not None:
        torch._check(list(residual.shape) == [n, k, p, q],
                     lambda: f"conv_bn_act: residual must have the output's shape {[n, k, p, q]}")
    return x.new_empty((n, k, p, q)).contiguous(memory_format=_memory_format_of(x))


def _conv_bn_act_setup_context(ctx, inputs, output):
    x, weight, bias, residual, stride, padding, dilation, relu, groups = inputs
    ctx.conv = (stride, padding, dilation, groups)
    ctx.relu = relu
    ctx.has_bias = bias is not None
    ctx.has_residual = residual is not None
    ctx.save_for_backward(x, weight, output if relu else None)


def _conv_bn_act_backward(ctx, grad):
    x, weight, out = ctx.saved_tensors
    stride, padding, dilation, groups = ctx.conv
    if ctx.relu:
        grad = grad * (out > 0)  # the ReLU mask, read off the saved output
    need = ctx.needs_input_grad
    gx, gw, gb = torch.ops.aten.convolution_backward(
        grad, x, weight, [weight.shape[0]] if ctx.has_bias else None, stride, padding, dilation, False, [0, 0],
        groups, [need[0], need[1], ctx.has_bias and need[2]])
    gres = grad if ctx.has_residual and need[3] else None
    return gx, gw, gb, gres, None, None, None, None, None


torch.library.register_autograd("resnet_ext::conv_bn_act", _conv_bn_act_backward,
                                setup_context=_conv_bn_act_setup_context)


def fold_bn_weights(weight: Tensor, bias: Optional[Tensor], running_mean: Tensor, running_var: Tensor, eps: float,
                    bn_weight: Optional[Tensor], bn_bias: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """Folds an eval-mode BatchNorm into the preceding conv: returns (weight', bias') with
    conv(x, weight') + bias' == bn(conv(x, weight) + bias). Computed in at least fp32, cast back to the conv's
    dtype (as torch.nn.utils.fusion.fuse_conv_bn_weights). Differentiable."""
    dtype = weight.dtype
    acc = torch.promote_types(dtype, torch.float32)
    scale = torch.rsqrt(running_var.to(acc) + eps)
    if bn_weight is not None:
        scale = scale * bn_weight.to(acc)
    shift = -running_mean.to(acc) if bias is None else bias.to(acc) - running_mean.to(acc)
    folded_bias = shift * scale
    if bn_bias is not None:
        folded_bias = folded_bias + bn_bias.to(acc)
    folded_weight = weight.to(acc) * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    return folded_weight.to(dtype), folded_bias.to(dtype)


def fold_bn(conv: torch.nn.Conv2d, bn: torch.nn.modules.batchnorm._BatchNorm) -> tuple[Tensor, Tensor]:
    """(weight, bias) of `conv` with the eval-mode `bn` that follows it folded in."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("fold_bn: bn has no running statistics (track_running_stats=False): it cannot be folded")
    return fold_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)


def explain(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, residual: Optional[Tensor] = None,
            stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1, relu: bool = True,
            groups: int = 1) -> tuple[str, str]:
    """Which path `conv_bn_act` would take with these arguments, and why: ("fused:<kernel>" or "stock", reason).
    Runs no kernel."""
    return _C.explain(x, weight, bias, residual, _pair(stride), _pair(padding), _pair(dilation), relu, groups)


def path_counts() -> dict:
    """How many conv_bn_act calls took each path since the last `reset_path_counts()` (eager calls only)."""
    return dict(_C.path_counts())


def reset_path_counts() -> None:
    _C.reset_path_counts()


def build_info() -> dict:
    """How the extension was built: CUDA or not, archs, the torch it was built against, fused kernels."""
    info = dict(_C.build_info())
    info["cuda_archs"] = [a for a in info["cuda_archs"].split(";") if a]
    info["fused_kernels"] = list(info["fused_kernels"])
    return info


def prefer_cudnn(enabled: bool = True) -> None:
    """Let cuDNN's fused conv+bias+ReLU(+add) take the layers it runs faster than resnet_ext's kernels (default: on;
    today that is every ReLU layer on Hopper, see explain()). Off: resnet_ext's own kernels wherever they apply."""
    _C.set_prefer_cudnn(bool(enabled))


def autotune(enabled: bool = True) -> None:
    """Turn the per-shape autotuner of the fused conv kernels on or off (env RESNET_EXT_AUTOTUNE=1 also turns it
    on). Each new shape is then timed once against every candidate and the stock path; candidates whose output
    differs from the stock result are rejected."""
    _C.set_autotune(bool(enabled))
