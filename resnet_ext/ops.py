"""The resnet_ext:: ops as Python functions, with their fake (meta) kernels and autograd, and the units the engine
composes from them and from ATen's oneDNN ops (the engine's one kernel interface in Python).

`conv_bn_act(x, weight, bias, residual, stride, padding, dilation, relu, groups)` computes
relu?(conv(x, weight) + bias + residual) with BatchNorm already folded into weight and bias (see `fold_bn`); with
`scale` and `shift` (fp32, one per output channel) it computes relu?(conv(x, weight) * scale + shift + bias +
residual), BatchNorm applied in fp32 to the unfolded weight's sum.
"""
from __future__ import annotations

import operator
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._C_loader import _C
from .switches import EXPERIMENTAL, nhwc_max_pool  # noqa: F401  (EXPERIMENTAL: the tests ask it here)

IntPair = Union[int, Sequence[int]]


def conv_output_size(size, kernel, stride=1, padding=0, dilation=1):
    """Output length of a convolution along one dimension: floor((size + 2*padding - dilation*(kernel-1) - 1) /
    stride) + 1, which is <= 0 exactly when the padded input is shorter than the dilated kernel (F.conv2d and
    conv_bn_act reject that). The one Python copy of the formula (the C++ one: conv_output_size in
    csrc/dispatch/conv_problem.h); works on SymInts."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _int_arg(name: str, v):
    """One integer as F.conv2d's argument parser takes it: Python, NumPy and SymInts and integer 0-dim tensors;
    not bools, floats or anything else (TypeError, as F.conv2d)."""
    if isinstance(v, bool):
        raise TypeError(f"conv_bn_act(): argument '{name}' must be an int or a tuple of ints, not bool")
    if isinstance(v, (int, torch.SymInt)):
        return v
    if isinstance(v, Tensor):
        if v.dim() == 0 and not (v.is_floating_point() or v.is_complex() or v.dtype == torch.bool):
            return int(v)
    elif not isinstance(v, float) and hasattr(v, "__index__"):
        return operator.index(v)
    raise TypeError(f"conv_bn_act(): argument '{name}' must be an int or a tuple of ints, "
                    f"not {type(v).__name__}")


def _expand_pair(name: str, v) -> list:
    """[h, w] from a list of one or two entries (one means both), as F.conv2d and the C++ op read int[2]."""
    if len(v) not in (1, 2):
        raise RuntimeError(f"conv_bn_act: expected {name} to be a single integer value or a list of 2 values to "
                           f"match the convolution dimensions, but got {name}={list(v)}")
    return [v[0], v[0]] if len(v) == 1 else [v[0], v[1]]


def _pair(name: str, v: IntPair) -> list:
    """F.conv2d's reading of a stride / padding / dilation argument: an int, or a tuple, list or torch.Size of one
    or two ints."""
    if isinstance(v, (tuple, list, torch.Size)):
        return _expand_pair(name, [_int_arg(name, e) for e in v])
    i = _int_arg(name, v)
    return [i, i]


def bool_arg(fn: str, name: str, v) -> bool:
    """A True/False argument: anything else (a string, None, 0) is a TypeError naming it, not its truth value."""
    if not isinstance(v, bool):
        raise TypeError(f"{fn}: {name} must be True or False, got {v!r}")
    return bool(v)


def _tensor_args(**named) -> None:
    """conv_bn_act's tensor arguments checked as its op schema checks them (x and weight a Tensor, the others a
    Tensor or None), before anything reads them: explain's binding and padding="same" would fail unnamed."""
    for name, v in named.items():
        if not isinstance(v, Tensor) and (v is not None or name in ("x", "weight")):
            kind = "Tensor" if name in ("x", "weight") else "Optional[Tensor]"
            raise RuntimeError(f"resnet_ext::conv_bn_act() Expected a value of type '{kind}' for argument '{name}' "
                               f"but instead found type '{type(v).__name__}'.")


def _conv_args(x: Tensor, weight: Tensor, residual: Optional[Tensor], stride, padding, dilation, groups):
    """The op's arguments from conv_bn_act's F.conv2d-style ones: an unbatched (C, H, W) x (and residual) gets a
    batch dimension; padding "valid" is 0 and "same" is F.conv2d's (an odd total pads the end by one more, through
    a padded copy of x, as F.conv2d does). Returns (x, residual, stride, padding, dilation, groups, unbatched)."""
    stride, dilation = _pair("stride", stride), _pair("dilation", dilation)
    groups = _int_arg("groups", groups)
    unbatched = isinstance(x, Tensor) and x.dim() == 3
    if unbatched:
        x = x.unsqueeze(0)
        if residual is not None:
            residual = residual.unsqueeze(0)
    if isinstance(padding, str):
        if padding == "valid":
            padding = [0, 0]
        elif padding == "same":
            if any(s != 1 for s in stride):
                raise RuntimeError("conv_bn_act: padding='same' is not supported for strided convolutions")
            if weight.dim() != 4 or any(d <= 0 for d in dilation):
                padding = [0, 0]  # the op reports the bad weight / dilation
            else:
                total = [d * (k - 1) for d, k in zip(dilation, weight.shape[2:])]
                padding = [t // 2 for t in total]
                extra = [t - 2 * (t // 2) for t in total]  # the end gets one more where the total is odd
                if any(extra):
                    x = torch.nn.functional.pad(x, (0, extra[1], 0, extra[0]))
        else:
            raise RuntimeError(f"conv_bn_act: invalid padding string {padding!r}: expected 'same' or 'valid'")
    else:
        padding = _pair("padding", padding)
    return x, residual, stride, padding, dilation, groups, unbatched


def conv_bn_act(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, residual: Optional[Tensor] = None,
                stride: IntPair = 1, padding: Union[IntPair, str] = 0, dilation: IntPair = 1, relu: bool = True,
                groups: int = 1, scale: Optional[Tensor] = None, shift: Optional[Tensor] = None) -> Tensor:
    """relu?(conv2d(x, weight, bias, stride, padding, dilation, groups) + residual) in one op (one fused kernel
    on CUDA where one applies, the stock ATen composition elsewhere); with `scale` and `shift` (float32, one per
    output channel, given together) relu?(conv2d(x, weight) * scale + shift + bias + residual), the scaling in at
    least fp32 on the convolution's sum (only kernels with that epilogue take it; elsewhere the convolution, then
    the epilogue in fp32, float64 for a float64 x). Differentiable. Takes the argument forms F.conv2d takes (ints or 1/2-tuples, padding "same"/"valid",
    an unbatched x) and rejects what it rejects."""
    _tensor_args(x=x, weight=weight, bias=bias, residual=residual, scale=scale, shift=shift)
    relu = bool_arg("conv_bn_act", "relu", relu)
    x, residual, stride, padding, dilation, groups, unbatched = _conv_args(x, weight, residual, stride, padding,
                                                                           dilation, groups)
    y = torch.ops.resnet_ext.conv_bn_act(x, weight, bias, residual, stride, padding, dilation, relu, groups, scale,
                                         shift)
    return y.squeeze(0) if unbatched else y


def memory_format_of(x: Tensor) -> torch.memory_format:
    # The same rule as ATen's Tensor::suggest_memory_format, which the real kernels follow.
    return torch._prims_common.suggest_memory_format(x)


@torch.library.register_fake("resnet_ext::scale_shift_act_")
def _scale_shift_act_fake(y, scale, shift, residual, relu):
    return None  # in place


def scale_shift_act_(y: Tensor, scale: Tensor, shift: Tensor, residual: Optional[Tensor], relu: bool) -> Tensor:
    """In place: y = relu?(y * scale + shift (+ residual)) with float32 per-channel scale and shift, one pass (CPU,
    float32 y, NCHW or channels_last); the eval BN, residual add and ReLU of a conv whose BN is not folded."""
    torch.ops.resnet_ext.scale_shift_act_(y, scale, shift, residual, relu)
    return y


@torch.library.register_fake("resnet_ext::max_pool_nhwc")
def _max_pool_nhwc_fake(x, kernel_size, stride, padding, dilation):
    return torch.ops.aten.max_pool2d(x, kernel_size, stride, padding, dilation).contiguous(
        memory_format=torch.channels_last if x.dim() == 4 else torch.contiguous_format)


if EXPERIMENTAL:  # the op exists only there (csrc/experimental/stem_pool.cpp)
    @torch.library.register_fake("resnet_ext::stem_pool")
    def _stem_pool_fake(x, weight, scale, shift):
        oh, ow = (x.shape[2] - 1) // 2 + 1, (x.shape[3] - 1) // 2 + 1  # conv 7x7/2 padding 3, then pool 3x3/2 pad 1
        return x.new_empty((x.shape[0], weight.shape[0], (oh - 1) // 2 + 1, (ow - 1) // 2 + 1)).contiguous(
            memory_format=torch._prims_common.suggest_memory_format(x))


def plain_max_pool(pool: torch.nn.Module) -> Optional[Tuple[tuple, tuple, tuple, tuple]]:
    """(kernel, stride, padding, dilation) as pairs of a stock nn.MaxPool2d without hooks, indices or ceil mode (what
    resnet_ext's own pooling kernels compute), else None."""
    if (type(pool) is not torch.nn.MaxPool2d or pool.return_indices or pool.ceil_mode
            or pool._forward_hooks or pool._forward_pre_hooks):
        return None
    pair = torch.nn.modules.utils._pair
    stride = pool.stride if pool.stride is not None else pool.kernel_size
    return pair(pool.kernel_size), pair(stride), pair(pool.padding), pair(pool.dilation)


def nchw_1x1(t: Tensor) -> Tensor:
    """An (N, C, 1, 1) map with NCHW strides (a view), as torchvision's BN (and NCHW pooling) hand such a map on:
    it is dense in both layouts, and channels_last convolutions and pools leave (C, 1, C, C) strides, which a hook
    would see and ATen's next convolution would take as a channels_last input (copying an NCHW weight on every
    call: resnet18 at 32x32, layer4's 512 -> 512 3x3, 2.0 ms of copies). Anything else as it is."""
    if t.dim() == 4 and t.shape[2] == 1 and t.shape[3] == 1 and t.is_contiguous() and t.stride(2) != 1:
        return t.as_strided(t.shape, (t.shape[1], 1, 1, 1), t.storage_offset())
    return t


def max_pool(pool: torch.nn.Module, x: Tensor) -> Tensor:
    """pool(x) for the models: a plain max pool (`plain_max_pool`) on an input that needs no gradient runs
    `max_pool_nhwc` on the CPU (its kernel takes channels_last fp32/bf16 on AVX-512 CPUs, else ATen's pool; an NCHW
    map goes through channels_last and back), and on CUDA where `nhwc_max_pool(True)`; anything else the module
    itself."""
    cpu = x.device.type == "cpu" and not torch.compiler.is_compiling()  # inductor fuses its own pool
    if (cpu or (nhwc_max_pool.on and x.is_cuda)) and not (torch.is_grad_enabled() and x.requires_grad):
        args = plain_max_pool(pool)
        if args is not None:
            if cpu and x.dim() == 4 and x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last):
                # The same maxima, but ATen's NCHW max pooling is far slower than either channels_last kernel with
                # both copies (ours; ATen's, on CPUs without AVX-512, within 1.2x of ours): the stem's 1x64x112x112
                # on a 2-core Zen 5 3.2 -> 0.66 ms, 2.1-6.1x on its maps (benchmarks/cpu_max_pool_nchw.py).
                y = torch.ops.resnet_ext.max_pool_nhwc(x.contiguous(memory_format=torch.channels_last), *args)
                return nchw_1x1(y.contiguous())
            return torch.ops.resnet_ext.max_pool_nhwc(x, *args)
    return pool(x)


@torch.library.register_fake("resnet_ext::winograd3x3")
def _winograd3x3_fake(x, u, bias, residual, relu, prefetch_addr=0, prefetch_bytes=0):
    torch._check(x.dim() == 4 and u.dim() in (3, 4), lambda: "winograd3x3: x must be 4-d and u 3-d or 4-d")
    return x.new_empty((x.shape[0], u.shape[2], x.shape[2], x.shape[3])).contiguous(
        memory_format=torch.channels_last)


@torch.library.register_fake("resnet_ext::winograd_weight")
def _winograd_weight_fake(w, m=0):
    torch._check(m in (0, 2) or (m == 4 and w.dtype == torch.float32),
                 lambda: f"winograd_weight: m (the output tile's side) must be 0, 2, or 4 for float32, got {m}")
    if w.dtype == torch.bfloat16:
        return w.new_empty((16, w.shape[1] // 2, w.shape[0], 2))
    return w.new_empty((16 if m == 2 else 36, w.shape[1], w.shape[0]))


def winograd_weight(weight: Tensor, m: int = 0) -> Tensor:
    """The transformed weight G w G^T that `winograd3x3` takes for inputs of the weight's dtype, for output tiles of
    m x m (CPU; computed in float64 from the [K, C, 3, 3] weight, rounded once): for float32 [36, C, K] (m 4, the
    default: F(4x4, 3x3)) or [16, C, K] (m 2: F(2x2, 3x3)); for bfloat16 [16, C / 2, K, 2] (m 2, the only one:
    channel pairs interleaved for AVX512-BF16's dot products)."""
    return torch.ops.resnet_ext.winograd_weight(weight.detach(), m)


def prefetch_range(t: Union[Tensor, Tuple[int, int], None]) -> Tuple[int, int]:
    """(address, bytes) of a CPU tensor's memory, the CPU ops' `prefetch_addr` and `prefetch_bytes` ((0, 0) for
    None; a pair given is returned as it is): a strided tensor's whole storage, or a oneDNN tensor's buffer (a weight
    prepacked for oneDNN's convolution). The ops only issue prefetches there, which never fault: the range changes
    no value."""
    if t is None:
        return 0, 0
    if isinstance(t, tuple) and len(t) == 2 and all(isinstance(v, int) for v in t):
        return t
    if not isinstance(t, Tensor) or t.device.type != "cpu" or t.layout not in (torch.strided, torch._mkldnn):
        raise TypeError(f"prefetch must be a CPU tensor (strided or oneDNN), its (address, bytes) or None, got "
                        f"{type(t).__name__ if not isinstance(t, Tensor) else f'{t.layout} on {t.device}'}")
    if torch.compiler.is_compiling():  # a traced tensor has no address: a prefetch is only a hint
        return 0, 0
    if t.is_mkldnn:
        return torch.ops.mkldnn.data_ptr(t), torch.ops.mkldnn._nbytes(t)
    s = t.untyped_storage()
    return s.data_ptr(), s.nbytes()


def winograd3x3(x: Tensor, u: Tensor, bias: Tensor, residual: Optional[Tensor], relu: bool,
                prefetch: Union[Tensor, Tuple[int, int], None] = None) -> Tensor:
    """relu?(conv3x3(x) + bias (+ residual)), stride 1, padding 1, by Winograd on `u = winograd_weight(w, m)` (CPU,
    channels_last, channels multiples of 16): for float32 F(4x4, 3x3) or F(2x2, 3x3) as u was made (F(2x2) on
    CPUs with AVX-512 only, `winograd_f23_supported()`); for bfloat16 F(2x2, 3x3) (bf16 operands, fp32 sums; CPUs
    with AVX512-BF16 only, `winograd_bf16_supported()`). `prefetch`: a CPU tensor (strided or oneDNN), or its
    `prefetch_range`, whose memory the op fetches into cache as it computes (the next unit's weight); it changes no
    value."""
    return torch.ops.resnet_ext.winograd3x3(x, u, bias, residual, relu, *prefetch_range(prefetch))


def winograd_bf16_supported() -> bool:
    """Whether this CPU runs `winograd3x3` on bfloat16 inputs (AVX512-BF16)."""
    return torch.ops.resnet_ext.winograd_bf16_supported()


def winograd_f23_supported() -> bool:
    """Whether this CPU runs `winograd3x3`'s float32 F(2x2, 3x3) (AVX-512)."""
    return torch.ops.resnet_ext.winograd_f23_supported()


@torch.library.register_fake("resnet_ext::conv1x1")
def _conv1x1_fake(x, w, bias, residual, relu, stride=1, prefetch_addr=0, prefetch_bytes=0):
    torch._check(x.dim() == 4 and bias.dim() == 1, lambda: "conv1x1: x must be 4-d and bias 1-d")
    return x.new_empty((x.shape[0], bias.shape[0], (x.shape[2] - 1) // stride + 1,
                        (x.shape[3] - 1) // stride + 1)).contiguous(memory_format=torch.channels_last)


@torch.library.register_fake("resnet_ext::conv1x1_add_")
def _conv1x1_add_fake(out, x, w, bias, relu, stride=1, prefetch_addr=0, prefetch_bytes=0):
    return None


def conv1x1_weight(weight: Tensor) -> Tensor:
    """A [K, C, 1, 1] weight packed for `conv1x1` (a copy), K a multiple of 64, in panels of 64 output channels:
    [K / 64, C, 64] for float32, [K / 64, C / 2, 64, 2] for bfloat16 (channel pairs interleaved for AVX512-BF16's
    dot products)."""
    k, c = weight.shape[:2]
    w = weight.detach().reshape(k // 64, 64, c)
    if w.dtype == torch.bfloat16:
        w = w.reshape(k // 64, 64, c // 2, 2).permute(0, 2, 1, 3)
    else:
        w = w.permute(0, 2, 1)
    return w.clone(memory_format=torch.contiguous_format)  # a copy even where the permute is already contiguous


def conv1x1(x: Tensor, w: Tensor, bias: Tensor, residual: Optional[Tensor], relu: bool, stride: int = 1,
            prefetch: Union[Tensor, Tuple[int, int], None] = None) -> Tensor:
    """relu?(conv1x1(x) + bias (+ residual)) with the given stride, no padding, as one GEMM on `w =
    conv1x1_weight(weight)` with the epilogue fused (CPU, channels_last, float32 or bfloat16, output channels a
    multiple of 64; CPUs where `conv1x1_supported(dtype)`). `prefetch` as in `winograd3x3`."""
    return torch.ops.resnet_ext.conv1x1(x, w, bias, residual, relu, stride, *prefetch_range(prefetch))


def conv1x1_add_(out: Tensor, x: Tensor, w: Tensor, bias: Tensor, relu: bool, stride: int = 1,
                 prefetch: Union[Tensor, Tuple[int, int], None] = None) -> Tensor:
    """`conv1x1` with `out` as the residual, written over it (returns `out`): out = relu?(conv1x1(x) + bias + out),
    the same values as `conv1x1(x, w, bias, out, relu, stride)`. `out` must not overlap x, w or bias; the frozen
    plan's residual tails, whose residual only the forward holds, where the write in place saves each output line's
    fetch for writing."""
    torch.ops.resnet_ext.conv1x1_add_(out, x, w, bias, relu, stride, *prefetch_range(prefetch))
    return out


@torch.library.register_fake("resnet_ext::conv_stem")
def _conv_stem_fake(x, w, bias, relu, kernel_size, stride, padding):
    torch._check(x.dim() == 4 and bias.dim() == 1, lambda: "conv_stem: x must be 4-d and bias 1-d")
    oh, ow = ((x.shape[2 + i] + 2 * padding[i] - kernel_size[i]) // stride[i] + 1 for i in (0, 1))
    return x.new_empty((x.shape[0], bias.shape[0], oh, ow)).contiguous(memory_format=torch.channels_last)


def conv_stem_weight(weight: Tensor) -> Tensor:
    """A [K, C, KH, KW] weight packed for `conv_stem` (a copy), K a multiple of 64: each kernel row's KW * C values
    in NHWC order (zero-padded to an even count for bfloat16), the KH rows one after another, packed as
    `conv1x1_weight` packs a 1x1 weight of that many input channels."""
    k, c, kh, kw = weight.shape
    w = weight.detach().permute(0, 2, 3, 1).reshape(k, kh, kw * c)
    if w.dtype == torch.bfloat16 and kw * c % 2:
        w = F.pad(w, (0, 1))
    return conv1x1_weight(w.reshape(k, -1, 1, 1))


def conv_stem(x: Tensor, w: Tensor, bias: Tensor, relu: bool, kernel_size: IntPair, stride: IntPair,
              padding: IntPair) -> Tensor:
    """relu?(conv(x) + bias) for a conv on few input channels (the stem), dilation 1, one group, on `w =
    conv_stem_weight(weight)`: each output pixel's kernel rows read in place from a zero-padded NHWC copy of x
    (any layout), on `conv1x1`'s register tiles with the epilogue fused (CPU, float32 or bfloat16, output channels
    a multiple of 64, channels_last output; CPUs where `conv1x1_supported(dtype)`). A bf16 `w` holds a zero after
    each odd kernel row (the pad `conv_stem_weight` writes): a hand-made one with anything else there is not checked."""
    return torch.ops.resnet_ext.conv_stem(x, w, bias, relu, kernel_size, stride, padding)


@torch.library.register_fake("resnet_ext::conv_direct")
def _conv_direct_fake(x, w, bias, relu, kernel_size, stride, padding, prefetch_addr=0, prefetch_bytes=0):
    torch._check(x.dim() == 4 and bias.dim() == 1, lambda: "conv_direct: x must be 4-d and bias 1-d")
    oh, ow = ((x.shape[2 + i] + 2 * padding[i] - kernel_size[i]) // stride[i] + 1 for i in (0, 1))
    return x.new_empty((x.shape[0], bias.shape[0], oh, ow)).contiguous(memory_format=torch.channels_last)


def conv_direct_weight(weight: Tensor) -> Tensor:
    """A [K, C, KH, KW] weight packed for `conv_direct` (a copy), K a multiple of 64 (C even for bfloat16): the
    KH * KW taps' C values one after another in NHWC order, packed as `conv1x1_weight` packs a 1x1 weight of that
    many input channels."""
    k = weight.shape[0]
    return conv1x1_weight(weight.detach().permute(0, 2, 3, 1).reshape(k, -1, 1, 1))


def conv_direct(x: Tensor, w: Tensor, bias: Tensor, relu: bool, kernel_size: IntPair, stride: IntPair,
                padding: IntPair, prefetch: Union[Tensor, Tuple[int, int], None] = None) -> Tensor:
    """relu?(conv(x) + bias), dilation 1, one group, on `w = conv_direct_weight(weight)`: each output pixel's kernel
    taps read in place from x (channels_last; zeros for taps in the padding) by `conv1x1`'s register tiles, the
    epilogue fused (CPU, float32 or bfloat16, output channels a multiple of 64, channels_last output; CPUs where
    `conv1x1_supported(dtype)`). `prefetch` as in `winograd3x3`."""
    return torch.ops.resnet_ext.conv_direct(x, w, bias, relu, kernel_size, stride, padding, *prefetch_range(prefetch))


def conv1x1_supported(dtype: torch.dtype) -> bool:
    """Whether this CPU runs `conv1x1` and `conv_stem` on inputs of `dtype` (AVX-512; AVX512-BF16 for bfloat16).
    Asked of the op once per dtype (the answer does not change; an op call's code is cold inside a forward)."""
    ok = _SUPPORTED.get(dtype)
    if ok is None:
        ok = _SUPPORTED[dtype] = torch.ops.resnet_ext.conv1x1_supported(dtype)
    return ok


_SUPPORTED: dict = {}


@torch.library.register_fake("resnet_ext::pool_linear")
def _pool_linear_fake(x, weight, bias):
    torch._check(x.dim() == 4 and weight.dim() == 2, lambda: "pool_linear: x must be 4-d and weight 2-d")
    return x.new_empty((x.shape[0], weight.shape[0]), dtype=torch.float32)


def pool_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """F.linear(x.float().mean((2, 3)), weight, bias): a ResNet's global average pool and fc as one op, the sums in
    fp32 (CPU; x float32 or bfloat16, NCHW or channels_last; weight and bias float32). On CPUs with AVX-512 its own
    loops (a GEMV: the weight read once for all of x's rows), elsewhere ATen's ops."""
    return torch.ops.resnet_ext.pool_linear(x, weight, bias)


def pool_linear_supported() -> bool:
    """Whether `pool_linear` runs its own loops on this CPU (AVX-512 F, BW and VL), not ATen's ops. Asked once."""
    ok = _SUPPORTED.get("pool_linear")
    if ok is None:
        ok = _SUPPORTED["pool_linear"] = torch.ops.resnet_ext.pool_linear_supported()
    return ok


def cpu_amx_bf16() -> bool:
    """Whether this CPU has AMX-BF16 tiles that the OS keeps: oneDNN's bf16 convolutions then run on them."""
    return torch.ops.resnet_ext.cpu_amx_bf16()


@torch.library.register_fake("resnet_ext::conv_bn_act")
def _conv_bn_act_fake(x, weight, bias, residual, stride, padding, dilation, relu, groups=1, scale=None, shift=None):
    # The checks of check_conv_bn_act_args (csrc/ops/conv_bn_act.cpp), in its order and with its messages.
    stride, padding, dilation = (_expand_pair(n, v) for n, v in
                                 (("stride", stride), ("padding", padding), ("dilation", dilation)))
    torch._check(stride[0] > 0 and stride[1] > 0,
                 lambda: f"conv_bn_act: non-positive stride is not supported, got stride={stride}")
    torch._check(padding[0] >= 0 and padding[1] >= 0,
                 lambda: f"conv_bn_act: negative padding is not supported, got padding={padding}")
    torch._check(dilation[0] > 0 and dilation[1] > 0,
                 lambda: f"conv_bn_act: non-positive dilation is not supported, got dilation={dilation}")
    torch._check(groups > 0, lambda: f"conv_bn_act: non-positive groups is not supported, got groups={groups}")
    torch._check(x.dim() == 4, lambda: f"conv_bn_act: x must be a 4-D tensor (N, C, H, W), got shape {list(x.shape)}")
    torch._check(x.dtype.is_floating_point,
                 lambda: f"conv_bn_act: x must be a floating-point tensor, got {x.dtype}")
    torch._check(weight.dim() == 4,
                 lambda: f"conv_bn_act: weight must be a 4-D tensor (K, C/groups, R, S), got shape {list(weight.shape)}")

    def like_x(name, t):
        torch._check(t.device == x.device,
                     lambda: f"conv_bn_act: {name} must be on x's device ({x.device}), got {t.device}")
        torch._check(t.dtype == x.dtype, lambda: f"conv_bn_act: {name} must have x's dtype ({x.dtype}), got {t.dtype}")

    like_x("weight", weight)
    n, c, h, w = x.shape
    k, cg, r, s = weight.shape
    torch._check(k > 0 and r > 0 and s > 0,
                 lambda: f"conv_bn_act: weight must not be empty, got shape {list(weight.shape)}")
    torch._check(c % groups == 0 and k % groups == 0,
                 lambda: f"conv_bn_act: groups={groups} must divide x's channels ({c}) and weight's output "
                         f"channels ({k})")
    torch._check(cg * groups == c,
                 lambda: f"conv_bn_act: channel mismatch: x has {c} channels but weight of shape "
                         f"{list(weight.shape)} expects {cg * groups}")
    if bias is not None:
        like_x("bias", bias)
        torch._check(bias.dim() == 1 and bias.shape[0] == k,
                     lambda: f"conv_bn_act: bias must have shape [{k}] (one per output channel), got "
                             f"{list(bias.shape)}")
    torch._check((scale is None) == (shift is None),
                 lambda: "conv_bn_act: scale and shift must be given together (the per-channel fp32 epilogue), got "
                         f"only {'scale' if scale is not None else 'shift'}")
    for name, t in (("scale", scale), ("shift", shift)):
        if t is not None:
            torch._check(t.device == x.device,
                         lambda: f"conv_bn_act: {name} must be on x's device ({x.device}), got {t.device}")
            torch._check(t.dtype == torch.float32,
                         lambda: f"conv_bn_act: {name} must be float32 (applied to the fp32 sum), got {t.dtype}")
            torch._check(t.dim() == 1 and t.shape[0] == k,
                         lambda: f"conv_bn_act: {name} must have shape [{k}] (one per output channel), got "
                                 f"{list(t.shape)}")
    p = conv_output_size(h, r, stride[0], padding[0], dilation[0])
    q = conv_output_size(w, s, stride[1], padding[1], dilation[1])
    torch._check(p > 0 and q > 0,
                 lambda: f"conv_bn_act: x's spatial size ({h}, {w}) is too small for a {r}x{s} kernel with padding "
                         f"{padding} and dilation {dilation}")
    if residual is not None:
        like_x("residual", residual)
        torch._check(list(residual.shape) == [n, k, p, q],
                     lambda: f"conv_bn_act: residual must have the output's shape {[n, k, p, q]}, got "
                             f"{list(residual.shape)}")
    return torch.empty((n, k, p, q), dtype=x.dtype, device=x.device, memory_format=memory_format_of(x))


def _conv_bn_act_setup_context(ctx, inputs, output):
    x, weight, bias, residual, stride, padding, dilation, relu, groups, *rest = inputs
    scale, shift = rest if rest else (None, None)
    # Dilation along a 1-tap kernel dimension changes nothing (and crashes oneDNN for some strides; see
    # conv_bn_act_stock in csrc/ops/conv_bn_act.cpp).
    dilation = [1 if k == 1 else d for k, d in zip(weight.shape[2:], _expand_pair("dilation", dilation))]
    ctx.conv = (_expand_pair("stride", stride), _expand_pair("padding", padding), dilation, groups)
    ctx.relu = relu
    ctx.has_bias = bias is not None
    ctx.has_residual = residual is not None
    ctx.save_for_backward(x, weight, output if relu else None, scale)


def _conv_bn_act_backward(ctx, grad):
    x, weight, out, scale = ctx.saved_tensors
    stride, padding, dilation, groups = ctx.conv
    if ctx.relu:
        grad = grad * (out > 0)  # the ReLU mask, read off the saved output
    need = ctx.needs_input_grad
    gx = gw = gscale = gshift = None
    # With scale and shift: d/d(conv) is grad * scale; d/dscale the sum of grad * conv(x, weight), recomputed.
    gconv = grad if scale is None else (grad * scale.view(1, -1, 1, 1)).to(grad.dtype)
    if need[0] or need[1]:
        gx, gw, _ = torch.ops.aten.convolution_backward(
            gconv, x, weight, None, stride, padding, dilation, False, [0, 0], groups, [need[0], need[1], False])
    # The bias gradient directly (ATen's convolution_backward returns zeros for it when x has no channels).
    gb = grad.sum((0, 2, 3)) if ctx.has_bias and need[2] else None
    gres = grad if ctx.has_residual and need[3] else None
    if scale is not None and len(need) > 9:
        if need[9]:
            conv = torch.ops.aten.convolution(x, weight, None, stride, padding, dilation, False, [0, 0], groups)
            gscale = (grad.float() * conv.float()).sum((0, 2, 3))
        if need[10]:
            gshift = grad.float().sum((0, 2, 3))
    return gx, gw, gb, gres, None, None, None, None, None, gscale, gshift


torch.library.register_autograd("resnet_ext::conv_bn_act", _conv_bn_act_backward,
                                setup_context=_conv_bn_act_setup_context)


def bn_scale_shift(running_mean: Tensor, running_var: Tensor, eps, bn_weight: Optional[Tensor],
                   bn_bias: Optional[Tensor], conv_bias: Optional[Tensor], acc: torch.dtype) -> tuple[Tensor, Tensor]:
    """The per-channel (scale, shift) with bn(conv(x) + conv_bias) == conv(x) * scale + shift for an eval-mode
    BatchNorm, computed in `acc`. The one place the fold is written (fold_bn_weights, and the batched fold of the
    models, which passes the concatenated statistics of many BNs and `eps` as a tensor)."""
    # ATen's CPU batch norm (eval): alpha = rsqrt(var + eps) * weight, beta = bias - mean * alpha in one fused
    # multiply-add (addcmul), the same arithmetic, so that the unfolded CPU default mode gives its bits.
    scale = torch.rsqrt(running_var.to(acc) + eps)
    if bn_weight is not None:
        scale = scale * bn_weight.to(acc)
    centre = -running_mean.to(acc) if conv_bias is None else conv_bias.to(acc) - running_mean.to(acc)
    shift = centre * scale if bn_bias is None else torch.addcmul(bn_bias.to(acc), centre, scale)
    return scale, shift


def _rounds_as_atens_bn() -> bool:
    """Whether `scale_shift_act_` gives ATen's eval batch norm bit for bit: its AVX2 and AVX-512 kernels round
    x * scale + shift once (a fused multiply-add), as the op does, its non-vectorized ones twice
    (`ATEN_CPU_CAPABILITY=default`, a CPU without AVX2). Asked of ATen itself, once per process (ATen picks its
    kernels once): float32 and bfloat16, NCHW and channels_last, channel and pixel counts off the vector widths."""
    g = torch.Generator().manual_seed(0)
    c = 67
    f32 = dict(generator=g, dtype=torch.float32, device="cpu")  # whatever default dtype or device is set
    mean, var = torch.randn(c, **f32), torch.rand(c, **f32) + 0.5
    weight, bias = torch.randn(c, **f32), torch.randn(c, **f32)
    with torch.no_grad():
        scale, shift = bn_scale_shift(mean, var, 1e-5, weight, bias, None, torch.float32)
        for dtype in (torch.float32, torch.bfloat16):
            for layout in (torch.contiguous_format, torch.channels_last):
                x = torch.randn(2, c, 5, 7, **f32).to(dtype).contiguous(memory_format=layout)
                ref = F.batch_norm(x, mean, var, weight, bias, False, 0.0, 1e-5)
                if not torch.equal(scale_shift_act_(x.clone(), scale, shift, None, False), ref):
                    return False
    return True


# The default mode's BN pass runs the op only where it is ATen's arithmetic; elsewhere ATen's BN (its bits).
ROUNDS_AS_ATENS_BN = _rounds_as_atens_bn()


def fold_bn_weights(weight: Tensor, bias: Optional[Tensor], running_mean: Tensor, running_var: Tensor, eps: float,
                    bn_weight: Optional[Tensor], bn_bias: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """Folds an eval-mode BatchNorm into the preceding conv: returns (weight', bias') with
    conv(x, weight') + bias' == bn(conv(x, weight) + bias). Computed in at least fp32, cast back to the conv's
    dtype (as torch.nn.utils.fusion.fuse_conv_bn_weights). Differentiable."""
    dtype = weight.dtype
    acc = torch.promote_types(dtype, torch.float32)
    scale, shift = bn_scale_shift(running_mean, running_var, eps, bn_weight, bn_bias, bias, acc)
    folded_weight = weight.to(acc) * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    return folded_weight.to(dtype), shift.to(dtype)


def fold_bn(conv: torch.nn.Conv2d, bn: torch.nn.modules.batchnorm._BatchNorm) -> tuple[Tensor, Tensor]:
    """(weight, bias) of `conv` with the eval-mode `bn` that follows it folded in."""
    if not isinstance(conv, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        raise TypeError(f"fold_bn: conv must be an nn.Conv1d/2d/3d, got {type(conv).__name__}")
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
        raise TypeError(f"fold_bn: bn must be a BatchNorm module, got {type(bn).__name__}")
    if bn.training:  # as torch's fuse_conv_bn_eval: training normalises by the batch's statistics
        raise ValueError("fold_bn: bn is in training mode; only an eval-mode BatchNorm can be folded (bn.eval())")
    if bn.num_features != conv.out_channels:
        raise ValueError(f"fold_bn: bn has {bn.num_features} features, conv {conv.out_channels} output channels")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("fold_bn: bn has no running statistics (track_running_stats=False): it cannot be folded")
    return fold_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)


# --------------------------------------------------------------------------------------------------------------
# Folding a model's BNs in one batch
# --------------------------------------------------------------------------------------------------------------

Fold = Tuple[Tensor, Tensor]  # (folded weight, folded bias)
_CONV_NAMES, _BN_NAMES = ("weight", "bias"), ("running_mean", "running_var", "weight", "bias")


def _attrs(m: nn.Module, names: Tuple[str, ...]) -> list:
    """[getattr(m, n) for n in names], read for a stock Conv2d/BatchNorm2d where nn.Module's attribute lookup finds
    them (an instance attribute first, then its parameters, then its buffers) without its slow `__getattr__`:
    the batched fold reads six per unit on every default-mode forward (with these reads and no zero conv-bias
    vector, `_affine_vectors` for resnet50 293 -> 181 us, resnet18 121 -> 76 us, 2-core Zen 5)."""
    if type(m) not in (nn.Conv2d, nn.BatchNorm2d):
        return [getattr(m, n) for n in names]
    d = m.__dict__
    params, buffers = d["_parameters"], d["_buffers"]
    return [d[n] if n in d else params[n] if n in params else buffers[n] if n in buffers else getattr(m, n)
            for n in names]


def bn_dtypes_ok(dtype: torch.dtype, dtypes) -> bool:
    """ATen's rule for an eval BatchNorm's weight, bias and statistics (`dtypes`, the set of theirs) on an input of
    `dtype`: all of that dtype, or all float32 for a bfloat16/float16 input; anything else is its error ("mixed
    dtype"), which an unfolded unit must leave to the module to raise."""
    return dtypes <= {dtype} or (dtype in (torch.bfloat16, torch.float16) and dtypes <= {torch.float32})


def _allocated(tensors: List[Optional[Tensor]]) -> bool:
    """Whether every tensor's storage still holds its elements (`_C.allocated`; under the compiler, fake tensors:
    true)."""
    return torch.compiler.is_compiling() or _C.allocated(tensors)


def _bn_tensors(pairs: Sequence[Tuple[nn.Conv2d, nn.BatchNorm2d]],
                conv_bias: bool = True) -> Tuple[List[int], List[list]]:
    """Each pair's BN channel count and its tensors, read afresh: ([n], [means, variances, bn weights, bn biases,
    conv biases (None without `conv_bias`)]), each list one entry (or None) per pair."""
    sizes, cols = [], ([], [], [], [], [])
    means, variances, bn_weights, bn_biases, conv_biases = cols
    for c, b in pairs:
        mean, var, bn_w, bn_b = _attrs(b, _BN_NAMES)
        means.append(mean)
        variances.append(var)
        bn_weights.append(bn_w)
        bn_biases.append(bn_b)
        conv_biases.append(_attrs(c, _CONV_NAMES)[1] if conv_bias else None)
        sizes.append(mean.shape[0] if mean is not None else _attrs(c, _CONV_NAMES)[0].shape[0])  # BN's channels
    return sizes, list(cols)


def _affine_vectors(pairs: Sequence[Tuple[nn.Conv2d, nn.BatchNorm2d]], conv_bias: bool = True,
                    input_dtype: Optional[torch.dtype] = None,
                    read: Optional[Tuple[List[int], List[list]]] = None) -> Optional[Tuple[Tensor, Tensor, List[int]]]:
    """Every pair's per-channel (scale, shift), bn(conv(x)) == conv(x) * scale + shift with conv(x) taken without
    its bias (`conv_bias`: the shift holds it; else BN's alone, for a conv output that has its bias), concatenated,
    in at least fp32, computed in one pass over the concatenated statistics of all the BNs (`bn_scale_shift`), and the
    channel count of each pair. All pairs must share the conv weights' dtype and device. A handful of launches
    whatever the depth: one cat and one cast per statistic (with a cast per tensor, some 300 launches, resnet50's
    whole fold took 5.6 ms per forward on an H200, the GPU idle meanwhile). With `input_dtype`: None where ATen's BN
    would refuse the BNs' tensors for such an input (their dtypes together fail `bn_dtypes_ok`, one is not a
    vector of its BN's channels, or its storage was freed: its error then comes from the modules; or one is not
    contiguous, where ATen's batch norm computes (x - mean) * invstd * weight + bias instead). `read`:
    `_bn_tensors(pairs)`, if the caller has it."""
    conv0, _ = pairs[0]
    dtype, device = conv0.weight.dtype, conv0.weight.device
    acc = torch.promote_types(dtype, torch.float32)
    sizes, cols = read or _bn_tensors(pairs, conv_bias)
    means, variances, bn_weights, bn_biases, conv_biases = cols
    if not _allocated([t for col in cols for t in col]):  # a storage freed under a tensor: ATen would read past it
        if input_dtype is not None:
            return None  # the modules raise ATen's error
        raise RuntimeError("The tensor has a non-zero number of elements, but its data is not allocated yet "
                           "(a conv bias or BatchNorm tensor whose storage was freed)")
    if input_dtype is not None:
        bn = [(t, n) for ts in (means, variances, bn_weights, bn_biases) for t, n in zip(ts, sizes) if t is not None]
        if (not bn_dtypes_ok(input_dtype, {t.dtype for t, _ in bn})
                or any(t.dim() != 1 or t.shape[0] != n or not t.is_contiguous() for t, n in bn)):
            return None

    def cat(tensors):
        return (torch.cat(tensors) if len(tensors) > 1 else tensors[0]).to(acc)

    def vec(got, fill):
        if all(t is None for t in got):  # e.g. no conv has a bias: one fill, not one per conv
            return torch.full((sum(sizes),), fill, dtype=acc, device=device)
        return cat([t if t is not None else torch.full((n,), fill, device=device) for t, n in zip(got, sizes)])

    eps = {b.eps for _, b in pairs}
    if len(eps) == 1:
        eps = eps.pop()
    else:
        eps = torch.tensor([b.eps for _, b in pairs], dtype=acc, device=device).repeat_interleave(
            torch.tensor(sizes, device=device))
    # Without conv biases (conv_bias=False, or none has one) the shift is BN's: bias - mean * scale, no zero vector.
    biases = conv_biases if conv_bias and any(t is not None for t in conv_biases) else None
    scale, shift = bn_scale_shift(cat(means), cat(variances), eps, vec(bn_weights, 1.0), vec(bn_biases, 0.0),
                                  None if biases is None else vec(biases, 0.0), acc)
    return scale, shift, sizes


def bn_affine_pairs(pairs: Sequence[Tuple[nn.Conv2d, nn.BatchNorm2d]], conv_bias: bool = True,
                    input_dtype: Optional[torch.dtype] = None,
                    memo: Optional[dict] = None) -> Optional[Tuple[List[Tensor], List[Tensor]]]:
    """Each pair's per-channel (scale, shift), bn(conv(x)) == conv(x) * scale + shift, in at least fp32 (see
    `_affine_vectors`; `conv_bias=False`: BN's own, for a conv output that has its bias, as ATen computes it; with
    `input_dtype`, None where ATen's BN would refuse the BNs' dtypes for such an input). With `memo` (a dict the
    caller keeps per model; CPU tensors only): the last call's result again where every input to the fold is what
    it was then, byte for byte (`_C.same_bytes`): a tensor written through `.data` keeps its version counter, so
    only its bytes tell (resnet18, isolated: 90-120 us to compute, 31 us to read and check; 2-core Zen 5)."""
    read = _bn_tensors(pairs, conv_bias)
    # A reused result carries no autograd history, and a tracer or compiler must record the computation.
    if (memo is None or torch.is_grad_enabled() or torch.jit.is_tracing() or torch.compiler.is_compiling()
            or pairs[0][0].weight.device.type != "cpu"):
        memo = None
    else:
        w = pairs[0][0].weight
        key = (conv_bias, input_dtype, w.dtype, tuple(b.eps for _, b in pairs))
        last = memo.pop("bn_affine", None)  # back only with a result for the snapshot's bytes
        if last is not None:
            snapshot = last[1]
        else:  # a normal tensor even under inference_mode: same_bytes resizes it in place on later calls
            with torch.inference_mode(False):
                snapshot = torch.empty(0, dtype=torch.uint8, device="cpu")  # whatever the default device
        flat = [t for col in read[1] for t in col]
        if _C.same_bytes(flat, snapshot) and last[0] == key:
            memo["bn_affine"] = last
            return last[2]
        # Computed from the bytes just recorded, not the live tensors: a write by another thread between the two
        # reads (A recorded, B computed, A again: no version moved by `.data`) would pair A's bytes with B's values.
        if snapshot.numel():
            copies = iter(_C.snapshot_tensors(snapshot, len(flat)))
            read = (read[0], [[next(copies) for _ in col] for col in read[1]])
    got = _affine_vectors(pairs, conv_bias, input_dtype, read)
    if got is None:
        return None
    scale, shift, sizes = got
    out = list(scale.split(sizes)), list(shift.split(sizes))
    if memo is not None:
        memo["bn_affine"] = (key, snapshot, out)
    return out


def fold_pairs(pairs: Sequence[Tuple[nn.Conv2d, nn.BatchNorm2d]], channels_last: bool,
               input_dtype: Optional[torch.dtype] = None) -> Optional[List[Fold]]:
    """BN folded into each conv of `pairs`, batched: the per-channel scale and shift of every BN are computed in
    one pass (`bn_affine_pairs`), then one multiply per weight writes the folded weight in the layout the kernels
    want. Differentiable when grad mode is on. With `input_dtype`: None where ATen's BN would refuse the BNs'
    dtypes for such an input (`bn_dtypes_ok`)."""
    if not pairs:
        return []
    dtype, device = pairs[0][0].weight.dtype, pairs[0][0].weight.device
    if any(c.weight.dtype != dtype or c.weight.device != device for c, _ in pairs):
        folds = [fold_pairs([p], channels_last, input_dtype) for p in pairs]  # mixed dtypes/devices: one at a time
        return None if any(f is None for f in folds) else [f[0] for f in folds]
    got = _affine_vectors(pairs, input_dtype=input_dtype)
    if got is None:
        return None
    scale, shift, sizes = got
    scales, shifts = scale.split(sizes), shift.to(dtype).split(sizes)  # one cast for all the biases
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    weights = []
    # Under torch.compile the out= form below is a graph break (torch 2.11's dynamo: "non-contiguous out=", seen on
    # an H200 for channels_last weights); the plain product is the same arithmetic and the compiler fuses it.
    differentiable = torch.is_grad_enabled() or torch.compiler.is_compiling()
    for (conv, _), s in zip(pairs, scales):
        s = s.view(-1, 1, 1, 1)
        if differentiable:
            weights.append((conv.weight * s).to(dtype).contiguous(memory_format=fmt))
        else:  # one kernel: multiply in fp32, store in the weight's dtype and the wanted layout
            out = torch.empty_like(conv.weight, memory_format=fmt)
            weights.append(torch.mul(conv.weight, s, out=out))
    return list(zip(weights, shifts))


# --------------------------------------------------------------------------------------------------------------
# Units on ATen's ops: oneDNN's fused convolutions, and BN applied unfolded (the CPU's)
# --------------------------------------------------------------------------------------------------------------

def wants_channels_last(x: Tensor) -> bool:
    """The folded weights' layout: channels_last on CUDA (the fused kernels are NHWC); on the CPU the input's own
    (oneDNN runs a convolution in its weight's layout, and a layout change between layers costs a copy)."""
    if x.dim() != 4:
        return False
    return x.is_cuda or (x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())


def needs_grad(x: Tensor, conv: nn.Module, bn: nn.Module, residual: Optional[Tensor]) -> bool:
    """Whether autograd records relu?(bn(conv(x)) + residual): grad mode on and some operand requires grad (the
    running statistics too: there ATen's batch norm raises that it is not differentiable)."""
    if not torch.is_grad_enabled():
        return False
    return (x.requires_grad or conv.weight.requires_grad or (residual is not None and residual.requires_grad)
            or any(t is not None and t.requires_grad
                   for t in (conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var)))


# oneDNN's bf16 convolution needs AVX512-BW/VL/DQ or AVX-NE-CONVERT (ATen raises elsewhere, where its own
# convolution falls back to its slow kernels): bf16 units run there as the stock conv with the bias.
_ONEDNN_DTYPES = (torch.float32,) + ((torch.bfloat16,) if torch.ops.mkldnn._is_mkldnn_bf16_supported() else ())


def onednn_takes(dtype: torch.dtype) -> bool:
    """Whether ATen's oneDNN convolution and linear ops run `dtype` on this CPU."""
    return dtype in _ONEDNN_DTYPES


def onednn_ok(x: Tensor, w: Tensor, b: Tensor, residual: Optional[Tensor]) -> bool:
    """oneDNN's fused convolution has no autograd: only where no gradient is wanted, and in eager mode (a
    compiler or tracer sees the resnet_ext op)."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    if torch.is_grad_enabled() and (x.requires_grad or w.requires_grad or b.requires_grad
                                    or (residual is not None and residual.requires_grad)):
        return False
    return (x.device.type == "cpu" and onednn_takes(x.dtype) and w.dtype == x.dtype and x.dim() == 4
            and x.numel() > 0 and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)


def onednn_args(conv: nn.Conv2d) -> tuple:
    """The conv's geometry as ATen's mkldnn convolution ops take it: padding, stride, dilation, groups."""
    return list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups


def onednn_conv(x: Tensor, w: Tensor, b: Tensor, conv: nn.Conv2d, relu: bool, residual: Optional[Tensor]) -> Tensor:
    """relu?(conv(x, w) + b + residual) as one oneDNN convolution with fused post-ops (ATen's mkldnn ops, the
    ones inductor uses after freezing); `w` may be a plain or a prepacked (opaque oneDNN) weight."""
    mk = torch.ops.mkldnn
    args = onednn_args(conv)
    unary = "relu" if relu else "none"
    if residual is None:
        return mk._convolution_pointwise(x, w, b, *args, unary, [], "")
    if not onednn_add_fuses(x, w, residual, conv):
        return add_act_(mk._convolution_pointwise(x, w, b, *args, "none", [], ""), residual, relu)
    return mk._convolution_pointwise.binary(x, residual, w, b, *args, "add", 1.0, unary, [], "")


def conv_out_shape(x: Tensor, out_channels: int, kernel_size, conv: nn.Conv2d) -> tuple:
    """The shape of conv2d(x) with a weight of out_channels and kernel_size and the conv's geometry."""
    return (x.shape[0], out_channels, *conv_out_size(x, kernel_size, conv))


def conv_out_size(x: Tensor, kernel_size, conv: nn.Conv2d) -> Tuple[int, int]:
    """The output height and width of conv2d over x with this kernel size and the conv's (numeric) padding, stride
    and dilation."""
    return tuple((x.shape[2 + i] + 2 * conv.padding[i] - conv.dilation[i] * (kernel_size[i] - 1) - 1)
                 // conv.stride[i] + 1 for i in (0, 1))


def onednn_add_fuses(x: Tensor, w: Tensor, residual: Tensor, conv: nn.Conv2d) -> bool:
    """Whether oneDNN's convolution can take the residual add as a post-op. Not for a residual of another shape than
    the output (a changed geometry or weight: torchvision's in-place add broadcasts it or raises its own error);
    torch 2.14.1 runs an NCHW one (input and weight both NCHW) as the convolution then ATen's add_relu, which has
    no bf16 kernel (an internal assert); torch 2.11 fails ("could not create a memory") on a 1x1 output (a 32x32
    image's layer4). There the add and ReLU run as two in-place ops after the convolution, in torchvision's order."""
    if residual.shape[-2:] == (1, 1) or residual.shape != conv_out_shape(x, w.shape[0], w.shape[2:], conv):
        return False
    return x.dtype != torch.bfloat16 or any(
        t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous() for t in (x, w))


def add_act_(out: Tensor, residual: Tensor, relu: bool) -> Tensor:
    out += residual
    return torch.relu_(out) if relu else out


def unfolded_unit(conv: nn.Conv2d, bn: nn.BatchNorm2d, x: Tensor, scale: Optional[Tensor], shift: Optional[Tensor],
                  relu: bool, residual: Optional[Tensor] = None, shortcut=None) -> Tensor:
    """relu?(bn(conv(x)) (+ residual)) with BN applied unfolded, as torchvision computes it: the stock conv, then
    BN's fp32 per-channel scale and shift (`bn_affine_pairs`, BN's own; computed here if not given), the residual add and the
    ReLU in one in-place pass (`scale_shift_act_`) where no gradient is wanted, the output is a dense float32 or
    bfloat16 tensor the residual matches and ATen's BN takes BN's dtypes for it; else torchvision's BN, add and ReLU
    (their autograd, their errors). `shortcut()`,
    if given, gives the residual after the conv, where torchvision calls the downsample. The one unfolded unit of
    both CPU paths, the flat forward and the module path."""
    out = F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    if shortcut is not None:
        residual = shortcut()
    if (isinstance(residual, Tensor) and out.shape[2:] == (1, 1) and residual.shape == out.shape
            and residual.stride() != out.stride() and residual.is_contiguous() and out.is_contiguous()):
        # (N, C, 1, 1) maps: dense in both layouts, the same elements at the same offsets whatever the strides say.
        residual = residual.as_strided(out.shape, out.stride(), residual.storage_offset())
    bn_tensors = (bn.running_mean, bn.running_var, bn.weight, bn.bias)
    if (out.dtype in (torch.float32, torch.bfloat16)
            and (scale is None or scale.numel() == out.shape[1])  # else BN's error, from the module
            and (out.is_contiguous() or out.is_contiguous(memory_format=torch.channels_last))
            and (residual is None or (isinstance(residual, Tensor) and residual.shape == out.shape  # else `+=`
                                      and residual.dtype == out.dtype and residual.device == out.device
                                      and residual.stride() == out.stride()))
            and not needs_grad(x, conv, bn, residual)
            and ROUNDS_AS_ATENS_BN
            and all(t is None or t.device == out.device for t in bn_tensors)
            # Given a scale and shift, the caller checked the BN tensors for the whole model, dtypes, shapes,
            # strides and storage (the flat forward, `unit`: `_affine_vectors` with its input dtype): not again
            # per unit.
            and (scale is not None or (bn_dtypes_ok(out.dtype, {t.dtype for t in bn_tensors if t is not None})
                                       and all(t is None or (t.shape == out.shape[1:2] and t.is_contiguous())
                                               for t in bn_tensors)
                                       and _allocated(list(bn_tensors))))):
        if scale is None:
            with torch.no_grad():
                (scale,), (shift,) = bn_affine_pairs([(conv, bn)], conv_bias=False)
        return scale_shift_act_(out, scale, shift, residual, relu)
    out = bn(out)
    if residual is not None:
        out += residual
    return torch.relu_(out) if relu else out


def explain(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, residual: Optional[Tensor] = None,
            stride: IntPair = 1, padding: Union[IntPair, str] = 0, dilation: IntPair = 1, relu: bool = True,
            groups: int = 1, scale: Optional[Tensor] = None, shift: Optional[Tensor] = None) -> tuple[str, str]:
    """Which path `conv_bn_act` takes with these arguments, and why: ("fused:<kernel>", "cudnn_fused",
    "cudnn_graph" (scale and shift, experimental build) or "stock", reason). Runs no kernel; asks the same
    dispatcher, with the same operands, as the call itself."""
    _tensor_args(x=x, weight=weight, bias=bias, residual=residual, scale=scale, shift=shift)
    relu = bool_arg("explain", "relu", relu)
    x, residual, stride, padding, dilation, groups, _ = _conv_args(x, weight, residual, stride, padding, dilation,
                                                                   groups)
    return _C.explain(x, weight, bias, residual, stride, padding, dilation, relu, groups, scale, shift)


def path_counts() -> dict:
    """How many conv_bn_act calls took each path since the last `reset_path_counts()` (eager calls only)."""
    return dict(_C.path_counts())


def reset_path_counts() -> None:
    """Sets every `path_counts()` count back to zero."""
    _C.reset_path_counts()


def build_info() -> dict:
    """How the extension was built: CUDA or not, archs, the torch it was built against, fused kernels."""
    info = dict(_C.build_info())
    info["cuda_archs"] = [a for a in info["cuda_archs"].split(";") if a]
    info["fused_kernels"] = list(info["fused_kernels"])
    return info
