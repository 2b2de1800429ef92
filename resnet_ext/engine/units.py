"""When a conv + BatchNorm (+ residual) (+ ReLU) unit may run fused, and how.

The contract (README, "Default and frozen modes"): a unit runs fused only when its modules are exactly the stock
ones (`nn.Conv2d` with zero padding, `nn.BatchNorm2d`, `nn.ReLU`) with no hooks of their own and no global module
hooks, and only outside FX symbolic tracing, TorchScript tracing and ONNX export (those record torchvision's
module graph); anything else runs that unit through its modules, in torchvision's order. In eval mode on CUDA (and
in compiled graphs) the BN is folded into the conv on
every forward (one batched fold for the whole model, see `ops.fold_pairs`); eager on the CPU it is applied unfolded,
as torchvision computes it (`unfolds`); a frozen model (`resnet_ext.freeze`) uses folds computed once. In train
mode the BN(+add)+ReLU is the stock composition or the fused op (`train_bn`).
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd import forward_ad
from torch.nn.modules import module as _module
from torch.overrides import _get_current_function_mode_stack
from torch.utils._device import DeviceContext

from .. import ops
from ..bn_act import SyncBatchNorm2d, bn_act, syncs_in_op
from ..ops import conv_bn_act
from . import state as _state

_GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks", "_global_forward_hooks_always_called")
# The BNs a unit runs: a cross-process one is BatchNorm2d's op but for its training statistics (`bn_act.group_of`).
_BN_TYPES = (nn.BatchNorm2d, nn.SyncBatchNorm, SyncBatchNorm2d)


def enabled(device: Optional[torch.device] = None) -> bool:
    """False where the model must show torchvision's module graph: FX symbolic tracing (feature extraction), ONNX
    export, torch.export (its program holds ATen ops only, as torchvision's does: it then loads, decomposes, runs in
    AOTInductor and converts to ONNX without resnet_ext), TorchScript tracing (torch.jit.trace checks the graph by
    tracing again under no_grad, and the engine's paths depend on whether a gradient is wanted: a trace with grad mode
    on failed that check), a global module hook that every module call must reach; under torch.func transforms, which
    the ops' autograd (torch.library) does not support, or inside a forward-mode AD level (dual tensors set no
    `requires_grad`, and the ops have no forward-mode formula: the tangent was dropped); under a TorchFunctionMode other
    than a default-device context on the input's `device`, or any TorchDispatchMode (quantization observers, debugging
    tools, flop counters: they may change or count what F.conv2d and the modules' other calls compute, and never see
    resnet_ext's ops; compile runs modes of its own); nor where a stock module class's method or the
    functional op it calls was replaced (`_STOCK_METHODS`: flop profilers patch them), or a resnet_ext block class's
    forward (`state.SERVED_FORWARDS`)."""
    if (torch.fx._symbolic_trace.is_fx_symbolic_tracing() or torch.onnx.is_in_onnx_export()
            or torch.compiler.is_exporting()
            or torch.jit.is_tracing() or torch._C._are_functorch_transforms_active()
            or forward_ad._current_level >= 0):
        return False
    if not torch.compiler.is_compiling():  # it runs modes of its own
        if _dispatch_modes():
            return False
        if torch._C._is_torch_function_mode_enabled() and not all(
                type(m) is DeviceContext and device is not None and m.device.type == device.type
                for m in _get_current_function_mode_stack()):
            return False
    if any(getattr(owner, name) is not f for (owner, name), f in zip(_STOCK_METHODS, _STOCK_IMPLS)):
        return False
    if any(cls.forward is not f for cls, f in _state.SERVED_FORWARDS):
        return False
    return not any(getattr(_module, name, None) for name in _GLOBAL_HOOKS)


_PLAIN_TORCH_FUNCTIONS = (Tensor.__torch_function__.__func__, torch._C._disabled_torch_function_impl)


def overrides(*tensors) -> bool:
    """Whether a tensor is of a subclass with its own `__torch_function__`, which torchvision's calls would meet and
    resnet_ext's ops would not (`has_torch_function` also reports an active mode: that is `enabled`'s business)."""
    if torch.compiler.is_compiling() or torch.compiler.is_exporting():
        return False
    for t in tensors:
        if t is not None and type(t) is not Tensor and type(t) is not nn.Parameter:
            f = getattr(type(t), "__torch_function__", None)
            if getattr(f, "__func__", f) not in _PLAIN_TORCH_FUNCTIONS:
                return True
    return False


def _dispatch_modes() -> bool:
    """Whether a TorchDispatchMode is active (tests replace this to spy on the engine's own ops)."""
    return torch._C._len_torch_dispatch_stack() > 0


# The module methods and functional ops the engine's paths stand in for: replaced (instrumentation, flop profilers,
# quantization tools), every module of that class computes or counts something else, so torchvision's code runs.
_STOCK_METHODS = ((nn.Conv2d, "forward"), (nn.Conv2d, "_conv_forward"), (nn.BatchNorm2d, "forward"),
                  (nn.SyncBatchNorm, "forward"), (nn.ReLU, "forward"), (nn.MaxPool2d, "forward"),
                  (nn.AdaptiveAvgPool2d, "forward"), (nn.Linear, "forward"), (nn.Sequential, "forward"),
                  (nn.Identity, "forward"),
                  (F, "conv2d"), (F, "batch_norm"), (F, "relu"), (F, "max_pool2d"), (F, "adaptive_avg_pool2d"),
                  (F, "linear"))
_STOCK_IMPLS = tuple(f if getattr(f, "__module__", "").split(".")[0] == "torch" else None  # replaced before this
                     for f in (getattr(owner, name) for owner, name in _STOCK_METHODS))         # import


PATCHED = ("forward", "_conv_forward")  # instance attributes that replace what a module computes


def hookless(m: nn.Module) -> bool:
    """No hooks of its own and no forward set on the instance (accelerate's hooks, debugging tools): calling the
    module computes what its class computes, so a fused path may stand in for it. (`in` per name: torch 2.11's
    dynamo cannot trace `__dict__.keys()` of a builtin module, a graph break under fullgraph compile.)"""
    return not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
                or any(k in m.__dict__ for k in PATCHED))


def plain_relu(relu: Optional[nn.Module]) -> bool:
    return relu is None or (type(relu) is nn.ReLU and hookless(relu))


def _plain_conv(conv: nn.Module, hooks_ok: bool = False) -> bool:
    # A parametrized conv has another type; legacy weight_norm / spectral_norm are forward pre-hooks. Geometry set
    # to an int or a list after construction (F.conv2d takes both) runs through the module: the fused paths take
    # nn.Conv2d's own tuples (an int stride raised TypeError, a list one was unhashable in the frozen plan's keys).
    # A weight of a tensor subclass with its own __torch_function__ runs through the module, which it sees.
    return (type(conv) is nn.Conv2d and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple)
            and isinstance(conv.stride, tuple) and isinstance(conv.dilation, tuple) and _hooks_allowed(conv, hooks_ok)
            and not overrides(conv.weight, conv.bias))


def _hooks_allowed(m: nn.Module, hooks_ok: bool) -> bool:
    # hooks_ok: any hooks but forward pre-hooks (legacy weight_norm, spectral_norm, pruning: `structure.stock`)
    return not m._forward_pre_hooks if hooks_ok else hookless(m)


def foldable(conv: nn.Module, bn: nn.Module, hooks_ok: bool = False) -> bool:
    """conv + an eval-mode BN that uses its running statistics, both stock and without hooks (`hooks_ok`: with any
    but forward pre-hooks)."""
    return (_plain_conv(conv, hooks_ok) and type(bn) in _BN_TYPES and _hooks_allowed(bn, hooks_ok)
            and not bn.training and bn.running_mean is not None and bn.running_var is not None)


BN_TENSORS = ("weight", "bias", "running_mean", "running_var")


def bn_tensors(bn: nn.Module) -> tuple:
    """The BN's weight, bias and running statistics, as attribute lookup finds them (the instance's own attribute,
    else the parameter, else the buffer; None where none), read from the dicts: nn.Module's __getattr__ is Python."""
    d = bn.__dict__
    params, buffers = d["_parameters"], d["_buffers"]
    return tuple(d[n] if n in d else params[n] if n in params else buffers.get(n) for n in BN_TENSORS)


def train_fusable(bn: nn.Module) -> bool:
    return type(bn) in _BN_TYPES and hookless(bn) and bn.training


def unit_pairs(block: nn.Module) -> List[Tuple[nn.Module, nn.Module]]:
    """A block's (conv, bn) pairs of the main path, in forward order (Bottleneck: three, BasicBlock: two)."""
    pairs = [(block.conv1, block.bn1), (block.conv2, block.bn2)]
    if hasattr(block, "conv3"):
        pairs.append((block.conv3, block.bn3))
    return pairs


def is_block(m: nn.Module) -> bool:
    """Whether `m` is exactly a resnet_ext BasicBlock or Bottleneck (not a subclass, whose forward may differ)."""
    return _state.is_block(m)


def model_pairs(model: nn.Module, foldable_only: bool = True) -> List[Tuple[nn.Module, nn.Module]]:
    """Every foldable (conv, bn) pair a ResNet's fused forward will look up, in forward order (all of the
    structure's pairs with `foldable_only=False`)."""
    pairs = [(model.conv1, model.bn1)]
    for m in model.modules():
        if is_block(m):
            pairs += unit_pairs(m)
            ds = m.downsample
            if type(ds) is nn.Sequential and len(ds) == 2:
                pairs.append((ds[0], ds[1]))
    return [(c, b) for c, b in pairs if not foldable_only or foldable(c, b)]


# --------------------------------------------------------------------------------------------------------------
# Training: which BN(+add)+ReLU a train-mode unit runs
# --------------------------------------------------------------------------------------------------------------

# Where the models run the fused training op (`bn_act`) by default: the devices (see `_device_key`) on which it is
# verified and measured faster than the stock composition (F.batch_norm, add, ReLU). None today: on an H200 (sm_90)
# resnet50's bf16 AMP train step measured 0.85x torchvision with it (benchmarks/results/2026-11-28-h200.md), sm_80
# is unmeasured, and on the CPU the op is ATen's own composition (no faster). `train_bn("fused")` forces it.
FUSED_TRAIN_DEVICES: frozenset = frozenset()
_TRAIN_MODES = ("auto", "fused", "stock")
_train_mode = "auto"


def train_bn(mode: Optional[str] = None) -> str:
    """Which BN(+residual add)+ReLU the models' train-mode units run; returns the mode in force before the call.
    "auto" (default): the fused op only on the devices where it is measured faster (`FUSED_TRAIN_DEVICES`), else
    the stock composition, as torchvision computes it; "fused": resnet_ext's fused op everywhere; "stock": the
    stock composition everywhere. `explain_train(x)` says what a given input gets."""
    global _train_mode
    previous = _train_mode
    if mode is not None:
        if mode not in _TRAIN_MODES:
            raise ValueError(f"train_bn: mode must be one of {_TRAIN_MODES}, got {mode!r}")
        _train_mode = mode
    return previous


def _device_key(x: Tensor) -> str:
    if x.is_cuda:
        major, minor = torch.cuda.get_device_capability(x.device)
        return f"cuda:sm_{major}{minor}"
    return x.device.type


def explain_train(x: Tensor) -> Tuple[str, str]:
    """("fused" or "stock", reason): the BN(+add)+ReLU a train-mode unit of the models runs for input `x`."""
    if _train_mode != "auto":
        return _train_mode, f'train_bn("{_train_mode}")'
    key = _device_key(x)
    if key in FUSED_TRAIN_DEVICES:
        return "fused", f"{key}: measured faster than the stock composition"
    return "stock", f"{key}: the fused op is not measured faster than the stock composition here"


def own_bns(m: nn.Module) -> List[nn.Module]:
    """The BatchNorms a ResNet's or block's own forward calls: its direct children's and its downsample's."""
    kids = list(m.children())
    ds = getattr(m, "downsample", None)
    if isinstance(ds, nn.Module):
        kids += list(ds.children())
    return [k for k in kids if isinstance(k, nn.modules.batchnorm._BatchNorm)]


def trains_stock(bn: nn.Module, x: Tensor) -> bool:
    """A train-mode BN that the units would run as torchvision does (see `unit`): not one whose cross-process
    statistics only the fused op computes (`bn_act.syncs_in_op`)."""
    return bn.training and not syncs_in_op(bn, x)


def train_fused(x: Tensor) -> bool:
    if _train_mode != "auto":
        return _train_mode == "fused"
    return bool(FUSED_TRAIN_DEVICES) and _device_key(x) in FUSED_TRAIN_DEVICES


# Paths taken in Python (oneDNN calls, units run through their modules), next to the op's own counters.
_counts: Dict[str, int] = {}


def count(path: str, n: int = 1) -> None:
    if torch.compiler.is_compiling():
        return
    _counts[path] = _counts.get(path, 0) + n


def path_counts() -> dict:
    """How many eager conv units took each path since the last `reset_path_counts()`: the op's paths
    ("fused:<kernel>", "cudnn_fused", "stock:<device>"), "onednn_prepacked" (CPU frozen mode, a oneDNN
    convolution with fused post-ops on the prepacked folded weight), "winograd", "conv1x1", "conv_stem" and
    "conv_direct" (CPU frozen mode, resnet_ext's own ops for 3x3, 1x1, the stem's and strided convs, see `cpu`),
    "unfolded" (CPU default mode: the stock conv, then BN as torchvision computes it, residual add and ReLU, in
    one pass, `ops.scale_shift_act_`, or through the modules), "modules" (run through the modules as torchvision
    does: hooks, swapped modules, ...);
    "train_fused" / "train_stock" (train-mode units: the stock conv, then the fused BN(+add)+ReLU op or
    torchvision's modules, see `train_bn`; a block whose BNs all train stock runs torchvision's code as it stands,
    its units counted "train_stock"); "stock_blocks" (eval-mode CPU blocks called on their own, outside a model's
    forward, which run torchvision's code: `engine.enabled`);
    "gemm" (CPU default mode, a 1x1 or 3x3 conv whose weight outweighs its output: one GEMM on the unreordered
    weight, then BN, residual and ReLU); "winograd_unfolded" (CPU default mode, an fp32 3x3 stride-1 conv by
    F(2x2, 3x3) on the live weight, then BN unfolded); "unfolded_nchw" (CPU default mode, channels_last forward: a
    large NCHW weight's conv run on NCHW copies of its maps, `cpu.nchw_unit_pays`); "winograd_f23" (of the frozen
    mode's fp32 "winograd" units, those on F(2x2, 3x3)); "prefetch" (of the frozen mode's units on resnet_ext's
    own ops, those that fetched the next unit's weight, `cpu.prefetch_pays`); and, counting whole forwards, not
    units, "flat_forwards": CPU eval forwards that ran as one flat sequence of calls (`engine.structure`)."""
    counts = ops.path_counts()
    for k, v in _counts.items():
        counts[k] = counts.get(k, 0) + v
    return counts


def reset_path_counts() -> None:
    ops.reset_path_counts()
    _counts.clear()


class Forward:
    """The state of one model forward, set by ResNet.forward for the blocks it calls (a block called on its own
    folds its own units): `folds`, conv module -> Fold or frozen entry, computed in one batch."""

    __slots__ = ("folds",)

    def __init__(self, folds: Dict[nn.Module, object]):
        self.folds = folds


_FORWARD: contextvars.ContextVar[Optional[Forward]] = contextvars.ContextVar("resnet_ext_forward", default=None)


@contextlib.contextmanager
def forward_state(state: Optional[Forward]):
    token = _FORWARD.set(state)
    try:
        yield
    finally:
        _FORWARD.reset(token)


def wants_grad(model: nn.Module, x: Optional[Tensor] = None) -> bool:
    """Whether a forward of `model` (on `x`) may record gradients: grad mode on and x, a parameter or a buffer
    requires grad (a BN statistic that does gets ATen's "not differentiable" error from torchvision's modules). One
    pass over the modules' dicts (resnet50: 150 us, less than `model.parameters()` alone)."""
    return torch.is_grad_enabled() and ((x is not None and x.requires_grad) or any(
        t is not None and t.requires_grad for m in model.modules() for d in (m._parameters, m._buffers)
        for t in d.values()))


def unfolds(x: Tensor) -> bool:
    """Whether the default mode applies BN unfolded, as torchvision computes it (the fp32 scale and shift after the
    stock conv): eager on the CPU. Elsewhere (CUDA's fused kernels, a compiled graph) BN is folded into the conv
    weights. (A TorchScript trace never gets here: `enabled`.)"""
    return x.device.type == "cpu" and not torch.compiler.is_compiling() and not torch.jit.is_tracing()


# --------------------------------------------------------------------------------------------------------------
# Running one unit
# --------------------------------------------------------------------------------------------------------------

def _written(t: Optional[Tensor]) -> tuple:
    """A tensor's version counter and data pointer: what an in-place write or a `.data =` assignment moves."""
    if t is None:
        return ()
    try:
        return t._version, t.data_ptr()
    except RuntimeError:  # an inference tensor keeps no counter
        return -1, t.data_ptr()


def bn_sources(bn: nn.Module, conv: Optional[nn.Module] = None) -> tuple:
    """What a BN's scale and shift (and, given its conv, the fold of the two) are computed from, as seen now: its
    eps, its tensors (`bn_tensors`, then the conv's weight and bias), their version counters and data pointers."""
    ts = bn_tensors(bn) + ((conv.weight, conv.bias) if conv is not None else ())
    return bn.eps, ts, tuple(_written(t) for t in ts)


def unchanged(sources: tuple, bn: nn.Module, conv: Optional[nn.Module] = None) -> bool:
    """Whether the modules are still what `sources` read: a hook or an inserted module may write into them (in place
    or by assignment, `.data =` included) during the forward, and torchvision's modules, called after that, read the
    new values. (A write that moves no counter, into `.data`, through numpy or another tensor on the same storage,
    or into an inference tensor, which keeps none, is seen by the next forward's byte comparison.)"""
    eps, ts, ws = sources
    now = bn_tensors(bn) + ((conv.weight, conv.bias) if conv is not None else ())
    return (bn.eps == eps and len(now) == len(ts) and all(a is b for a, b in zip(now, ts))
            and all(_written(t) == w for t, w in zip(now, ws)))


class Affine(NamedTuple):
    """A unit's BN as the per-channel (scale, shift) of `ops.bn_affine_pairs(..., conv_bias=False)`, applied unfolded
    to the conv's output (its bias included) as torchvision computes it (CPU default mode), made from `sources`
    (`bn_sources`, when the forward's batch was computed)."""
    scale: Tensor
    shift: Tensor
    sources: tuple

    def current(self, bn: nn.Module) -> bool:
        return unchanged(self.sources, bn)


class Fold(NamedTuple):
    """A unit's conv weight and bias with its BN folded in (`ops.fold_pairs`; the default mode off the CPU), made
    from `sources` (`bn_sources(bn, conv)`, when the forward's batch was computed)."""
    weight: Tensor
    bias: Tensor
    sources: tuple

    def current(self, conv: nn.Module, bn: nn.Module) -> bool:
        return unchanged(self.sources, bn, conv)


def _addable(residual, x: Tensor) -> bool:
    """Whether the fused units can add `residual` (None: nothing to add): a tensor of x's dtype and device. A hook on
    the downsample may return anything torchvision's `out += identity` takes (a float64 tensor, a number) or
    refuses (a tuple)."""
    return residual is None or (isinstance(residual, Tensor) and residual.dtype == x.dtype
                                and residual.device == x.device)


def _add_relu(out: Tensor, residual, relu: bool) -> Tensor:
    """torchvision's block tail: `out += identity`, then the ReLU."""
    out += residual
    return torch.relu_(out) if relu else out


def eval_unit(conv: nn.Conv2d, bn: nn.BatchNorm2d, x: Tensor, relu: bool, residual: Optional[Tensor],
              shortcut=None) -> Tensor:
    """relu?(bn(conv(x)) + residual) for a foldable (conv, bn): from a frozen fold, or (CPU default mode, `unfolds`)
    the stock conv, BN, add and ReLU, or fused with BN folded. `shortcut()`, if given, gives the residual."""
    state = None if torch.compiler.is_compiling() else _FORWARD.get()
    # Default-mode folds are keyed by (conv, bn) (one conv module may sit in two units), frozen ones by conv; a
    # frozen forward on the CPU also has the default mode's scale and shift, for the units its folds do not take.
    entry = (state.folds.get(conv) or state.folds.get((conv, bn))) if state is not None else None
    if entry is not None and not isinstance(entry, Affine) and hasattr(entry, "run"):  # a frozen entry: folded once
        if shortcut is not None:
            residual, shortcut = shortcut(), None
        if not _addable(residual, x):
            return _add_relu(eval_unit(conv, bn, x, False, None), residual, relu)
        out = entry.run(conv, bn, x, relu, residual)
        if out is not None:
            return ops.nchw_1x1(out) if out.device.type == "cpu" else out  # BN's strides, which a hook may see
        entry = state.folds.get((conv, bn))
    if (entry is None or isinstance(entry, Affine)) and unfolds(x):
        count("unfolded")
        scale, shift = (entry.scale, entry.shift) if entry is not None and entry.current(bn) else (None, None)
        return ops.nchw_1x1(ops.unfolded_unit(conv, bn, x, scale, shift, relu, residual, shortcut))
    if shortcut is not None:
        residual = shortcut()
    if not _addable(residual, x):
        return _add_relu(eval_unit(conv, bn, x, False, None), residual, relu)
    if entry is None or not entry.current(conv, bn):  # none in the batch, or a hook changed the modules since
        with contextlib.nullcontext() if ops.needs_grad(x, conv, bn, residual) else torch.no_grad():
            entry = ops.fold_pairs([(conv, bn)], channels_last=ops.wants_channels_last(x))[0]
    w, b = entry[:2]
    return conv_bn_act(x, w, b, residual, conv.stride, conv.padding, conv.dilation, relu, conv.groups)


def unit(conv: nn.Module, bn: nn.Module, relu_mod: Optional[nn.Module], x: Tensor,
         residual: Optional[Tensor] = None, shortcut=None) -> Tensor:
    """relu(bn(conv(x)) + residual) (no ReLU when `relu_mod` is None), fused where the modules allow, else through
    the modules exactly as torchvision's blocks call them. `shortcut`, a callable giving the residual, is called
    where torchvision calls the downsample: after conv and bn."""
    # An input the conv cannot take goes through the modules too: torchvision's error, not a kernel's.
    # So does a tensor subclass with its own __torch_function__ (a conv's output, when that conv's weight is one).
    relu_ok = (plain_relu(relu_mod) and isinstance(x, Tensor) and x.dim() == 4
               and x.shape[1] == getattr(conv, "in_channels", -1)
               and not overrides(x, residual))
    # Under CPU autocast the stock modules run, as autocast casts them (the fold would mix dtypes); so does a BN
    # whose dtypes ATen's batch norm refuses for the conv's output (its error, where a fold would answer), and an
    # input on another device than the weight (ATen's device error, not the op's argument check).
    if (relu_ok and foldable(conv, bn) and x.device == conv.weight.device
            and not (x.device.type == "cpu" and torch.is_autocast_enabled("cpu"))
            and ops.bn_dtypes_ok(conv.weight.dtype, {t.dtype for t in bn_tensors(bn) if t is not None})):
        return eval_unit(conv, bn, x, relu_mod is not None, residual, shortcut)
    synced = relu_ok and syncs_in_op(bn, x)
    if relu_ok and train_fusable(bn) and (x.numel() > 0 or synced):
        # A converted BN (or an nn.SyncBatchNorm on CPU tensors) computes cross-process statistics in the fused op
        # (an empty batch too: it joins the all-reduces with a count of zero, as nn.SyncBatchNorm's empty ranks do).
        if train_fused(x) or synced:
            count("train_fused")
            out = conv(x)
            if shortcut is not None and synced:
                # bn's all-reduces before the downsample BN's, in torchvision's order: a rank that runs the modules
                # (a hook there) pairs its collectives in that order, and the two BNs of one width summed each
                # other's statistics without an error. The add and ReLU then as torchvision's block does them.
                out = bn_act(out, bn, None, False)
                out = out + shortcut()
                return torch.relu(out) if relu_mod is not None else out
            if shortcut is not None:
                residual = shortcut()
            return bn_act(out, bn, residual, relu_mod is not None)
        count("train_stock")
    else:
        count("modules")
    out = bn(conv(x))
    if shortcut is not None:
        residual = shortcut()
    if residual is not None:
        out += residual
    return relu_mod(out) if relu_mod is not None else out


def downsample(ds: Optional[nn.Module], x: Tensor) -> Tensor:
    """The block's shortcut: x, or downsample(x) with its conv + BN fused where they are the stock pair."""
    if ds is None:
        return x
    if type(ds) is nn.Sequential and len(ds) == 2 and hookless(ds):
        conv, bn = ds[0], ds[1]
        if foldable(conv, bn) or (_plain_conv(conv) and train_fusable(bn) and (x.numel() > 0 or syncs_in_op(bn, x))):
            return unit(conv, bn, None, x)
    return ds(x)
