"""The engine's core: a stock ResNet recorded once as a sequence of units (`Structure`), and `run`, which runs an
eval forward as that flat sequence of calls, without the module tree in between, each unit as its plan says.

A plan gives each unit a `wb`: how it runs and on what (the unit kinds below). The device policies make them:
`cpu` (the default mode's unfolded BN or GEMM units, the frozen mode's prepacked oneDNN or Winograd units) and
`cuda` (one `conv_bn_act` call per unit on the folds). A plan runs only where nothing can observe the difference
(`Structure.matches`): the model, every submodule and every conv/BN are torchvision's stock types in eval mode,
in the structure they had when it was recorded, none has a hook or a forward set on the instance, and no global
hook, tracer, compiler or transform is active. Then no caller can hold a block's output except the next block,
so a block's last oneDNN convolution adds its residual in place (oneDNN's sum post-op into the identity or the
downsample's output). Anything else runs the module-by-module path (`units`).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from .. import ops
from . import state as _state
from . import units

CACHE_LIMIT = 8   # plans (per input shape, dtype and layout) kept per model


_MISSING = object()


class Unit:
    """One conv + BN (+ ReLU) of the flat forward: the modules and the conv's geometry."""

    __slots__ = ("conv", "bn", "relu", "args", "geometry")

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, relu: bool):
        self.conv, self.bn, self.relu = conv, bn, relu
        self.args = units.onednn_args(conv)
        self.geometry = (conv.padding, conv.stride, conv.dilation, conv.groups)  # what `args` was made from


class Structure:
    """What the flat forward assumed of the model when it was recorded, and the units in forward order."""

    def __init__(self, model: nn.Module):
        self.stem = Unit(model.conv1, model.bn1, True)
        self.blocks: List[Tuple[List[Unit], Optional[Unit], Unit]] = []  # (head units, downsample, tail)
        for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
            for b in layer:
                main = [Unit(c, n, True) for c, n in units.unit_pairs(b)]
                ds = None if b.downsample is None else Unit(b.downsample[0], b.downsample[1], False)
                self.blocks.append((main[:-1], ds, main[-1]))
        self.units = [self.stem] + [u for head, ds, tail in self.blocks for u in head + ([ds] if ds else []) + [tail]]
        self.modules = list(model.modules())
        self.types = [type(m) for m in self.modules]
        self.children = [(m, tuple(m._modules.values())) for m in self.modules if m._modules]
        self.weights = [(u, u.conv.weight, u.conv.bias) for u in self.units]

    def matches(self, model: nn.Module) -> bool:
        """Whether the model is still exactly what was recorded: same modules in the same places, same types, no
        hooks or instance-level forward, same conv weight and bias objects and geometry, BNs in eval mode with running
        statistics."""
        for m, kids in self.children:
            if tuple(m._modules.values()) != kids:
                return False
        for m, t in zip(self.modules, self.types):
            d = m.__dict__  # read directly: this runs on every forward, and nn.Module's attribute lookup is slow
            if (type(m) is not t or d["_forward_hooks"] or d["_forward_pre_hooks"] or d["_backward_hooks"]
                    or d["_backward_pre_hooks"] or units.PATCHED & d.keys()):
                return False
        # Parameters and buffers read where nn.Module's attribute lookup finds them, an instance attribute first,
        # else the store (its __getattr__ is slow: this check 215 -> 75 us for resnet50).
        for u, w, b in self.weights:
            conv = u.conv
            d = conv.__dict__
            params = d["_parameters"]
            if ((d["weight"] if "weight" in d else params.get("weight", _MISSING)) is not w
                    or (d["bias"] if "bias" in d else params.get("bias", _MISSING)) is not b
                    or conv.padding_mode != "zeros"
                    or (conv.padding, conv.stride, conv.dilation, conv.groups) != u.geometry):
                return False
        for u in self.units:
            d = u.bn.__dict__
            buffers = d["_buffers"]
            if (d["training"] or (d["running_mean"] if "running_mean" in d else buffers.get("running_mean")) is None
                    or (d["running_var"] if "running_var" in d else buffers.get("running_var")) is None):
                return False
        return True


def stock(model: nn.Module) -> bool:
    """Whether the model is a stock resnet_ext ResNet: torchvision's module types everywhere, plain convs/BNs."""
    if model.training or not units.hookless(model):
        return False
    if not (type(model.relu) is nn.ReLU and type(model.maxpool) is nn.MaxPool2d
            and type(model.avgpool) is nn.AdaptiveAvgPool2d and type(model.fc) is nn.Linear
            and units.foldable(model.conv1, model.bn1)):
        return False
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        if type(layer) is not nn.Sequential:
            return False
        for b in layer:
            if not units.is_block(b) or type(b.relu) is not nn.ReLU:
                return False
            if not all(units.foldable(c, n) for c, n in units.unit_pairs(b)):
                return False
            ds = b.downsample
            if ds is not None and not (type(ds) is nn.Sequential and len(ds) == 2 and units.foldable(ds[0], ds[1])):
                return False
    # Train mode matters only for the BNs (foldable); a forward set on an instance must run (accelerate's hooks).
    return all(units.hookless(m) for m in model.modules())


def structure(model: nn.Module, x: Tensor) -> Optional[Structure]:
    """The model's recorded structure if it still matches, else a new one if the model is stock, else None; None
    also where `x` is not of the model's dtype and channels (the module path gives torchvision's errors)."""
    st = _state.of(model)
    s = st.structure
    if s is None or not s.matches(model):
        s = st.structure = Structure(model) if stock(model) else None
    if s is None or x.dtype != s.stem.conv.weight.dtype or x.shape[1] != s.stem.conv.in_channels:
        return None
    return s


# --------------------------------------------------------------------------------------------------------------
# Running a plan
# --------------------------------------------------------------------------------------------------------------

def _gemm(u: Unit, x: Tensor, scale: Tensor, shift: Tensor, residual: Optional[Tensor]) -> Tensor:
    """relu?(bn(conv(x)) (+ residual)) for a 1x1 conv as one GEMM on the conv's own weight, BN as the per-channel
    scale and shift on the output: no weight copy at all, where oneDNN would reorder the whole weight on every
    call. Channels_last input and output."""
    sh, sw = u.conv.stride
    if sh != 1 or sw != 1:
        x = x[:, :, ::sh, ::sw]
    n, c, h, w = x.shape
    k = u.conv.out_channels
    wm = u.conv.weight.reshape(k, c).contiguous()  # a view of a contiguous or channels_last 1x1 weight, else a copy
    # x is channels_last (gemm_pays), so (n*h*w, c) rows; the output (n*h*w, k) is channels_last too.
    rows = x.permute(0, 2, 3, 1).reshape(-1, c)
    if rows.dtype == torch.float32:
        # oneDNN's matmul on the plain weight: 1.6-2.9x torch.mm (MKL's sgemm) on resnet50's 1x1 shapes here
        # (200-400 vs 120-185 GFLOP/s, 2-core AVX-512 AMD; benchmarks/results/2026-12-03-cpu-gemm-units/).
        out = torch.ops.mkldnn._linear_pointwise.default(rows, wm, None, "none", [], "")
    else:
        out = torch.mm(rows, wm.t())
    y = out.view(n, h, w, k).permute(0, 3, 1, 2)
    relu = u.relu or residual is not None
    if out.dtype == torch.float32 and (residual is None or residual.stride() == y.stride()):
        return ops.scale_shift_act_(y, scale, shift, residual, relu)  # BN as ATen computes it, add, ReLU: one pass
    out.mul_(scale).add_(shift)
    if residual is not None:
        out.add_(residual.permute(0, 2, 3, 1).reshape(-1, k))
    if relu:
        out.relu_()
    return y


# A unit's `wb`: (folded weight, bias), run by oneDNN; or (GEMM or UNFOLDED, scale, shift); or (WINO, transformed
# weight, bias); or (FUSED, folded weight, bias), run by the conv_bn_act op (CUDA).
GEMM, UNFOLDED, WINO, FUSED = "gemm", "unfolded", "winograd", "fused"


def _fused(u: Unit, x: Tensor, wb, residual: Optional[Tensor], relu: bool) -> Tensor:
    padding, stride, dilation, groups = u.args
    return torch.ops.resnet_ext.conv_bn_act(x, wb[1], wb[2], residual, stride, padding, dilation, relu, groups)


def _conv(u: Unit, x: Tensor, wb) -> Tensor:
    """relu?(bn(conv(x)))."""
    if wb[0] is FUSED:
        return _fused(u, x, wb, None, u.relu)
    if wb[0] is WINO:
        return ops.winograd3x3(x, wb[1], wb[2], None, u.relu)
    if wb[0] is UNFOLDED:
        return units.unfolded_unit(u.conv, u.bn, x, wb[1], wb[2], u.relu)
    if wb[0] is GEMM:
        return _gemm(u, x, wb[1], wb[2], None)
    return torch.ops.mkldnn._convolution_pointwise.default(x, wb[0], wb[1], *u.args, "relu" if u.relu else "none",
                                                           [], "")


def _tail(u: Unit, y: Tensor, residual: Tensor, wb) -> Tensor:
    """relu(bn(conv(y)) + residual); a oneDNN one is written into `residual` (which only this forward holds)."""
    if wb[0] is FUSED:
        return _fused(u, y, wb, residual, True)
    if wb[0] is WINO:
        return ops.winograd3x3(y, wb[1], wb[2], residual, True)
    if wb[0] is UNFOLDED:
        return units.unfolded_unit(u.conv, u.bn, y, wb[1], wb[2], True, residual)
    if wb[0] is GEMM:
        return _gemm(u, y, wb[1], wb[2], residual)
    if not units.onednn_add_fuses(y, wb[0]):
        out = torch.ops.mkldnn._convolution_pointwise.default(y, wb[0], wb[1], *u.args, "none", [], "")
        return units.add_act_(out, residual, True)
    return torch.ops.mkldnn._convolution_pointwise_.binary(residual, y, wb[0], wb[1], *u.args, "add", 1.0, "relu",
                                                            [], "")


def _maxpool(pool: nn.Module, x: Tensor) -> Tensor:
    """pool(x) (on CUDA `ops.max_pool`, which may run resnet_ext's NHWC kernel); an NCHW CPU x goes through
    channels_last and back: the same maxima, but ATen's NCHW max pooling is far slower (the stem's 64x112x112 at
    batch 1 on 2 threads: 3.1 ms NCHW, 0.58 ms with both copies)."""
    if x.is_cuda:
        return ops.max_pool(pool, x)
    if x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last):
        return pool(x.contiguous(memory_format=torch.channels_last)).contiguous()
    return pool(x)


def run(model: nn.Module, s: Structure, x: Tensor, wb, fc_dtype: Optional[torch.dtype] = None) -> Tensor:
    """The forward, with `wb(unit, x)` giving each unit's `wb` (see `_conv`), in the order of `s.units`; the pooled
    features cast to `fc_dtype` if given (freeze(dtype=torch.bfloat16): fc in the model's fp32)."""
    x = _maxpool(model.maxpool, _conv(s.stem, x, wb(s.stem, x)))
    for head, ds, tail in s.blocks:
        y = x
        for u in head:
            y = _conv(u, y, wb(u, y))
        residual = x if ds is None else _conv(ds, x, wb(ds, x))
        x = _tail(tail, y, residual, wb(tail, y))
        del y, residual  # free the block's buffers now, for the next block's allocations (hot in cache)
    x = torch.flatten(model.avgpool(x), 1)
    return model.fc(x if fc_dtype is None else x.to(fc_dtype))
