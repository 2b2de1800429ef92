"""A stock ResNet's whole eval forward on the CPU as a flat sequence of oneDNN convolutions, the calls inductor's
frozen graph makes, without the module tree in between.

It runs only where nothing can observe the difference (`Structure.matches`): the model, every submodule and every
conv/BN are torchvision's stock types in eval mode, in the structure they had when the structure was recorded,
none has a hook, and no global hook, tracer, compiler or transform is active. Then no caller can hold a block's
output except the next block, so each block's last convolution adds its residual in place (oneDNN's sum post-op
into the identity or the downsample's output), saving an allocation and a pass over the largest tensors. Anything
else runs the module-by-module path (`fusion`).
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from . import fusion, ops
from . import state as _state

_CACHE_LIMIT = 8   # programs (per input shape, dtype and layout) kept per model
_DTYPES = (torch.float32, torch.bfloat16)


_MISSING = object()


class Unit:
    """One conv + BN (+ ReLU) of the flat forward: the modules and the conv's geometry."""

    __slots__ = ("conv", "bn", "relu", "args", "geometry")

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, relu: bool):
        self.conv, self.bn, self.relu = conv, bn, relu
        self.args = fusion.onednn_args(conv)
        self.geometry = (conv.padding, conv.stride, conv.dilation, conv.groups)  # what `args` was made from


class Structure:
    """What the flat forward assumed of the model when it was recorded, and the units in forward order."""

    def __init__(self, model: nn.Module):
        self.stem = Unit(model.conv1, model.bn1, True)
        self.blocks: List[Tuple[List[Unit], Optional[Unit], Unit]] = []  # (head units, downsample, tail)
        for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
            for b in layer:
                units = [Unit(c, n, True) for c, n in fusion.unit_pairs(b)]
                ds = None if b.downsample is None else Unit(b.downsample[0], b.downsample[1], False)
                self.blocks.append((units[:-1], ds, units[-1]))
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
                    or d["_backward_pre_hooks"] or fusion.PATCHED & d.keys()):
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
    if model.training or not fusion.hookless(model):
        return False
    if not (type(model.relu) is nn.ReLU and type(model.maxpool) is nn.MaxPool2d
            and type(model.avgpool) is nn.AdaptiveAvgPool2d and type(model.fc) is nn.Linear
            and fusion.foldable(model.conv1, model.bn1)):
        return False
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        if type(layer) is not nn.Sequential:
            return False
        for b in layer:
            if not fusion.is_block(b) or type(b.relu) is not nn.ReLU:
                return False
            if not all(fusion.foldable(c, n) for c, n in fusion.unit_pairs(b)):
                return False
            ds = b.downsample
            if ds is not None and not (type(ds) is nn.Sequential and len(ds) == 2 and fusion.foldable(ds[0], ds[1])):
                return False
    # Train mode matters only for the BNs (foldable); a forward set on an instance must run (accelerate's hooks).
    return all(fusion.hookless(m) for m in model.modules())


# --------------------------------------------------------------------------------------------------------------
# Running
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
    wm = u.conv.weight.reshape(k, c)  # a view of a contiguous or channels_last 1x1 weight
    # x is channels_last (gemm_pays), so (n*h*w, c) rows; the output (n*h*w, k) is channels_last too.
    out = torch.mm(x.permute(0, 2, 3, 1).reshape(-1, c), wm.t())
    out.mul_(scale).add_(shift)
    if residual is not None:
        out.add_(residual.permute(0, 2, 3, 1).reshape(-1, k))
    if u.relu or residual is not None:
        out.relu_()
    return out.view(n, h, w, k).permute(0, 3, 1, 2)


def gemm_pays(u: Unit, x: Tensor) -> bool:
    """Whether a 1x1 conv runs faster as `_gemm` than through oneDNN (which reorders the weight on every call
    unless it is prepacked) for a channels_last input: where the weight outweighs the output, the input channels
    being at least twice the output pixels. Measured on a 2-core AVX-512 machine at batch 1: layer4's 1x1 convs of
    resnet50 2.1 -> 0.8 ms (2048 -> 512) and 4.1 -> 1.8 ms (the strided downsample); at 1x the ratio no gain; on
    NCHW inputs oneDNN runs these convs without the reorder and the GEMM loses (0.66 -> 0.87 ms)."""
    conv = u.conv
    if conv.kernel_size != (1, 1) or conv.groups != 1 or conv.padding != (0, 0) or not fusion.wants_channels_last(x):
        return False
    out_pixels = x.shape[0] * (-(-x.shape[2] // conv.stride[0])) * (-(-x.shape[3] // conv.stride[1]))
    return conv.in_channels >= 2 * out_pixels


WINOGRAD = os.environ.get("RESNET_EXT_CPU_WINOGRAD", "1") != "0"
WINOGRAD_MIN_TILES = 16  # see winograd_pays


def winograd_pays(u: Unit, x: Tensor) -> bool:
    """Whether a frozen unit runs as `ops.winograd3x3` (Winograd F(4x4, 3x3): 4x fewer multiplies) rather than
    oneDNN's direct convolution: a 3x3 stride-1 conv with padding 1 on a channels_last float32 input, channels
    multiples of 16, and at least 16 output tiles of 4x4 (N * ceil(H/4) * ceil(W/4)), below which the GEMMs only
    stream the transformed weight (4x the weight's size). Measured on a 2-core AVX-512 machine against oneDNN on
    prepacked weights: resnet50's 3x3 convs 1.6-2.2x faster at batch 1 (layers 1-3; layer 4 has 4 tiles and runs
    2.5x slower) and 1.2-2.2x at batch 8. RESNET_EXT_CPU_WINOGRAD=0 turns it off."""
    conv = u.conv
    if (not WINOGRAD or conv.kernel_size != (3, 3) or u.geometry != ((1, 1), (1, 1), (1, 1), 1)
            or x.dtype != torch.float32 or not fusion.wants_channels_last(x)
            or conv.in_channels % 16 or conv.out_channels % 16):
        return False
    return x.shape[0] * (-(-x.shape[2] // 4)) * (-(-x.shape[3] // 4)) >= WINOGRAD_MIN_TILES


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
        return fusion.unfolded_unit(u.conv, u.bn, x, wb[1], wb[2], u.relu)
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
        return fusion.unfolded_unit(u.conv, u.bn, y, wb[1], wb[2], True, residual)
    if wb[0] is GEMM:
        return _gemm(u, y, wb[1], wb[2], residual)
    if not fusion.onednn_add_fuses(y, wb[0]):
        out = torch.ops.mkldnn._convolution_pointwise.default(y, wb[0], wb[1], *u.args, "none", [], "")
        return fusion.add_act_(out, residual, True)
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


def _run(model: nn.Module, s: Structure, x: Tensor, wb, fc_dtype: Optional[torch.dtype] = None) -> Tensor:
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


CL_PIXELS = 150_000  # NCHW inputs with at least this many pixels (N*H*W) run channels_last inside


def internal_layout(x: Tensor) -> Tensor:
    """The layout the flat forward runs in: the input's, except that a large NCHW input runs channels_last (one
    copy of the input; nothing inside is visible to anyone, and the logits have no layout). Measured on resnet50
    in the default mode (2-core AVX-512 machine, fp32, 224x224 NCHW input and weights): batch 1 0.97x -> 0.76x
    torchvision, batch 2 1.19x -> 1.12x, batch 4 1.13x -> 1.34x, batch 8 0.97x -> 1.40x: oneDNN's channels_last
    convolutions are faster, but reorder NCHW weights on every call, which only a large batch amortizes."""
    if x.shape[0] * x.shape[2] * x.shape[3] >= CL_PIXELS and not fusion.wants_channels_last(x):
        return x.contiguous(memory_format=torch.channels_last)
    return x


def usable(x: Tensor) -> bool:
    """Eager CPU inference on a 4-d fp32/bf16 input that needs no gradient."""
    return (x.device.type == "cpu" and x.dim() == 4 and x.dtype in _DTYPES and x.numel() > 0
            and not (torch.is_grad_enabled() and x.requires_grad) and not torch.jit.is_tracing()
            and not torch.is_autocast_enabled("cpu")
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)


def forward_frozen(model: nn.Module, x: Tensor, folds: Dict[nn.Module, object]) -> Optional[Tensor]:
    """The frozen model's forward on prepacked weights, or None where the flat forward does not apply."""
    if not usable(x):
        return None
    s = structure(model, x)
    if s is None:
        return None
    st = _state.of(model)
    cached = st.programs  # (folds, structure, {input key: (unit wbs, Winograd count)})
    if cached is None or cached[0] is not folds or cached[1] is not s:
        # The folds must belong to these modules (a conv or weight replaced since `freeze` has none).
        own = all(u.conv in folds and folds[u.conv].belongs_to(u.conv, u.bn) for u in s.units)
        cached = st.programs = (folds, s, {} if own else None)
    dtype = folds[s.stem.conv].weight.dtype if cached[2] is not None else None
    fc_dtype = None
    if dtype != x.dtype:
        if dtype != torch.bfloat16 or x.dtype != torch.float32:
            return None
        fc_dtype, x = x.dtype, x.to(dtype)  # freeze(dtype=torch.bfloat16): the convolutions in bf16, fc in fp32
    programs = cached[2]
    key = (tuple(x.shape), x.dtype, x.stride())
    x = internal_layout(x)
    entry = programs.get(key)  # (each unit's wb, how many of them are Winograd units)
    if entry is None:  # first call of this input: pack each unit's weight for its input size
        if len(programs) >= _CACHE_LIMIT:
            programs.clear()
        program = []

        def wb(u, y):
            fold = folds[u.conv]
            if winograd_pays(u, y) and fold.weight.dtype == torch.float32:
                program.append((WINO, fold.winograd_weight(), fold.bias))
            else:
                program.append((fold.packed_for(u.conv, y), fold.bias))
            return program[-1]

        out = _run(model, s, x, wb, fc_dtype)
        entry = programs[key] = (program, sum(w[0] is WINO for w in program))
    else:
        it = iter(entry[0])
        out = _run(model, s, x, lambda u, y: next(it), fc_dtype)
    n_wino = entry[1]
    fusion.count("onednn_prepacked", len(s.units) - n_wino)
    if n_wino:
        fusion.count(WINO, n_wino)
    fusion.count("flat_forwards")
    return out


def forward_default(model: nn.Module, x: Tensor) -> Optional[Tensor]:
    """The default mode's forward, every BN read afresh and applied as torchvision applies it, unfolded: each unit
    is the stock conv then BN (its fp32 scale and shift, all units' in one batch), residual add and ReLU in one
    pass (`fusion.unfolded_unit`), or, for a channels_last 1x1 conv whose weight outweighs its output, one GEMM on the
    unreordered weight (`gemm_pays`); None where the flat forward does not apply (a gradient may be needed, ...)."""
    if not usable(x) or torch.is_grad_enabled():
        return None
    s = structure(model, x)
    if s is None:
        return None
    plans = _state.of(model).flat_plans  # per input, which units run as a GEMM (shapes only, never stale)
    key = (tuple(x.shape), x.dtype, x.stride())
    x = internal_layout(x)
    scales, shifts = fusion.bn_affine_pairs([(u.conv, u.bn) for u in s.units])
    affine = {id(u): (sc, sh) for u, sc, sh in zip(s.units, scales, shifts)}
    plan = plans.get(key)
    if plan is None or plan[0] is not s:  # learn on this call how each unit runs, from its input's shape
        if len(plans) >= _CACHE_LIMIT:
            plans.clear()
        kinds = {}

        def wb(u, y):
            kinds[id(u)] = GEMM if gemm_pays(u, y) else UNFOLDED
            return (kinds[id(u)], *affine[id(u)])

        out = _run(model, s, x, wb)
        plan = plans[key] = (s, kinds)
    else:
        kinds = plan[1]
        out = _run(model, s, x, lambda u, y: (kinds[id(u)], *affine[id(u)]))
    fusion.count("flat_forwards")
    for kind in (GEMM, UNFOLDED):
        n = sum(k == kind for k in plan[1].values())
        if n:
            fusion.count(kind, n)
    return out


# --------------------------------------------------------------------------------------------------------------
# CUDA: the same recorded sequence, each unit one conv_bn_act call (opt-in until a GPU run verifies it)
# --------------------------------------------------------------------------------------------------------------

_ON_CUDA = False


def on_cuda(enabled: Optional[bool] = None) -> bool:
    """Whether a stock model's CUDA eval forward runs as the recorded sequence of `conv_bn_act` calls (this
    module) rather than through the module tree (`fusion.unit` per unit): the same ops on the same folds, with
    less host time per forward. Returns the setting in force before the call. Off by default: not yet run on a GPU
    (`benchmarks/gpu_check.sh --only flatcuda` checks it against the module path and times both)."""
    global _ON_CUDA
    previous = _ON_CUDA
    if enabled is not None:
        if not isinstance(enabled, bool):
            raise TypeError(f"flat.on_cuda: enabled must be True or False, got {enabled!r}")
        _ON_CUDA = enabled
    return previous


def usable_fused(x: Tensor) -> bool:
    """An eager input the fused units take as the module path would: 4-d, fp32/fp16/bf16, not empty, no gradient
    wanted, no tracer and no autocast (under which the module path runs the stock modules)."""
    return (x.dim() == 4 and x.dtype in (torch.float32, torch.float16, torch.bfloat16) and x.numel() > 0
            and not torch.is_grad_enabled() and not torch.jit.is_tracing()
            and not torch.is_autocast_enabled(x.device.type))


def forward_fused(model: nn.Module, x: Tensor, folds: Optional[Dict[nn.Module, object]]) -> Optional[Tensor]:
    """The eval forward with every unit one `conv_bn_act` call on a folded weight: the frozen folds if given, else
    this forward's, all units folded now in one batch (`fusion.fold_pairs`, as the module path folds them). None
    where this does not apply (a gradient may be wanted, the structure changed, folds that are not these modules').
    Runs on any device the op runs on (the CPU runs the op's stock composition); the models use it on CUDA."""
    if not usable_fused(x):
        return None
    s = structure(model, x)
    if s is None:
        return None
    if folds is None:
        folded = fusion.fold_pairs([(u.conv, u.bn) for u in s.units], channels_last=fusion.wants_channels_last(x))
        wbs = [(FUSED, w, b) for w, b in folded]
    else:
        wbs = []
        for u in s.units:
            f = folds.get(u.conv)
            if f is None or not f.belongs_to(u.conv, u.bn) or f.weight.dtype != x.dtype:
                return None
            wbs.append((FUSED, f.weight, f.bias))
    it = iter(wbs)
    out = _run(model, s, x, lambda u, y: next(it))
    fusion.count("flat_forwards")
    return out
