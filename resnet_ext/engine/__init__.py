"""The execution engine: the one entry from the models (`enabled(m, x)`, then `forward(model, x)` for a ResNet,
`block(b, x)` for a block called on its own or through the module path) and the choice of how a forward runs.

    __init__   which path a forward takes (this file), and the module path
    cpu, cuda  the engine per device, each running a stock model's eval forward as its recorded units in one flat
               sequence of calls on its own plan: CPU default (BN unfolded as torchvision computes it, GEMM units)
               and frozen (prepacked oneDNN, Winograd) plans; CUDA's fused-unit plan (opt-in, `switches.on_cuda`)
               and the frozen mode's CUDA graphs of it (opt-in)
    structure  a stock model recorded once as a sequence of units, and whether it still is what was recorded
    units      the per-unit path (hooks, swapped modules, tracing, training): when a conv + BN (+ add) (+ ReLU)
               unit may run fused, folding, train-mode BN
    frozen     the frozen mode's folds; state: the one per-model state object

The units themselves are ops (`resnet_ext.ops`: the fused op, oneDNN's convolutions, BN applied unfolded). A
ResNet's forward goes, in this order, to: the frozen mode's CUDA graphs; on CUDA (opt-in) the fused-unit plan; on
the CPU in eval mode the CPU plans; else the module path, unit by unit (`units.unit`: fused where the modules are
the stock ones, else through them), with this forward's BN folds (or, on the CPU, scales and shifts) computed once
for the whole model (`forward_state`). Whatever cannot be proven unchanged from torchvision runs through the
modules.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .. import ops
from .. import switches
from ..switches import on_cuda
from . import cpu, cuda, frozen, fused_train, structure, units
from .cpu import frozen_input_ok
from . import state as _state
from .state import serves  # noqa: F401  (the models' ResNet registers itself)


def enabled(m: nn.Module, x) -> bool:
    """Whether the forward of `m` (a ResNet or a block) on `x` hands over to the engine. Not where the model must show
    torchvision's module graph (`units.enabled`: FX tracing, ONNX export, a global hook, ...), nor for a train-mode
    forward whose own BNs all train as torchvision's do (`train_bn` gives the stock composition on this device and none
    computes cross-process statistics in the fused op, `bn_act.syncs_in_op`): that runs torchvision's code as it stands,
    without the engine's dispatch per unit. A block decides for its own BNs (its downsample's included), the ResNet for
    its stem's; on the CPU the ResNet's forward enters all the same where the memory reuse around it pays
    (`cpu.reuse_pays`; `cpu.reused_memory`: 1.00-1.16x on a train step, 2 cores). Nor for an eval-mode block called on
    its own on the CPU (torchvision's IntermediateLayerGetter, a detection backbone's body: no model forward under way):
    the engine's units measured 0.82-0.91x torchvision's code there (resnet18 and resnet50 at batch 1;
    benchmarks/results/2026-12-06-cpu-block-memory/), or on a model's module path with NCHW maps and weights (`_nchw`),
    counted as "stock_blocks". Not for an input that is no tensor, not a strided one (`x.to_mkldnn()`, sparse) or a
    subclass with its own `__torch_function__`: torchvision's code runs it or raises its own error for it."""
    if (not isinstance(x, Tensor) or x.layout != torch.strided or not units.enabled(x.device)
            or units.overrides(x)):
        return False
    if (not m.training and x.device.type == "cpu" and not _state.is_model(m) and not torch.compiler.is_compiling()
            and (not cpu.in_model() or _nchw(m, x))):
        units.count("stock_blocks")
        return False
    if m.training and fused_block(m, x):
        return True
    if m.training and not units.train_fused(x):
        bns = units.own_bns(m)
        if all(units.trains_stock(bn, x) for bn in bns):
            if (x.device.type == "cpu" and _state.is_model(m) and not torch.compiler.is_compiling()
                    and cpu.reuse_pays(x)):  # (compiled, no reuse: a size guard would recompile across it)
                return True  # the stem's unit then counts itself
            units.count("train_stock", len(bns))
            return False
    return True


def _nchw(m: nn.Module, x: Tensor) -> bool:
    """Whether an eval block (or model) on the CPU module path (hooks in the body, inserted modules) has NCHW maps
    and weights: its units would each run torchvision's convolution and BN arithmetic (`units.unfolds`; a frozen
    fold is channels_last, so it does not apply), saving only BN's passes, which cost more in Python per unit than
    they save: resnet18 1x3x32x32 with a hook on layer4 measured 0.87-0.91x torchvision that way. torchvision's
    code runs such a block, and the model's forward makes no batch of BN scales for it."""
    conv = getattr(m, "conv1", None)
    return (isinstance(conv, nn.Conv2d) and not ops.wants_channels_last(x)
            and not ops.wants_channels_last(conv.weight))


def invalidate(model: nn.Module) -> None:
    """Drops what depends on the model's weight values (frozen folds, their programs and graphs)."""
    frozen.invalidate(model)


def upgrade_pickled(state: dict) -> dict:
    """A pickled model's __dict__ as it loads now: one pickled before the state object kept its frozen flag under
    "_resnet_ext_frozen" (and its folds under "_resnet_ext_folds"). (`upgrade_marks` then converts BatchNorms
    pickled when `convert_sync_batchnorm` only marked them.)"""
    if "_resnet_ext_frozen" in state:
        state = dict(state)
        state[_state.KEY] = _state.ExtState(state.pop("_resnet_ext_frozen"))
        state.pop("_resnet_ext_folds", None)
    return state


# --------------------------------------------------------------------------------------------------------------
# Forwards
# --------------------------------------------------------------------------------------------------------------

def fused_block(b: nn.Module, x) -> bool:
    """Whether a train-mode block's forward runs the fused decomposition (`switches.fused_train`, opt-in; eager
    only: compiled forwards keep the module path, and traced ones never enter the engine)."""
    return (switches.fused_train.on and b.training and not (torch.compiler.is_compiling() or torch.jit.is_tracing())
            and fused_train.why_not(b, x) is None)


def explain_train(x: Tensor, block: Optional[nn.Module] = None):
    """(path, reason): what a train-mode unit of the models runs for input `x` ("fused" or "stock" BN(+add)+ReLU,
    see `units.train_bn`); with `block`, what that block runs: "fused_train" where the fused decomposition takes it
    (`switches.fused_train`), else its units' choice, with why the decomposition does not apply."""
    if not isinstance(x, Tensor):
        raise TypeError(f"explain_train: x must be a Tensor, got {type(x).__name__}")
    if block is not None and not isinstance(block, nn.Module):
        raise TypeError(f"explain_train: block must be an nn.Module or None, got {type(block).__name__}")
    mode, reason = units.explain_train(x)
    if block is None or not switches.fused_train.on:
        return mode, reason
    why = "traced or compiled" if torch.compiler.is_compiling() or torch.jit.is_tracing() else \
        fused_train.why_not(block, x)
    if why is None:
        return "fused_train", "switches.fused_train: the fused conv + BN statistics decomposition"
    return mode, f"fused_train does not apply ({why}); units: {reason}"


def block(b: nn.Module, x: Tensor) -> Tensor:
    """A BasicBlock's or Bottleneck's forward: the fused training decomposition where it is on and applies, else
    unit by unit (`units.unit`), in torchvision's order."""
    if fused_block(b, x):
        return fused_train.block(b, x)
    pairs = units.unit_pairs(b)
    out = x
    for conv, bn in pairs[:-1]:
        out = units.unit(conv, bn, b.relu, out)
    conv, bn = pairs[-1]
    return units.unit(conv, bn, b.relu, out, shortcut=lambda: units.downsample(b.downsample, x))


def frozen_folds(model: nn.Module):
    """The frozen folds, or None: not frozen, or this forward may need gradients for the parameters or buffers (the
    frozen folds are constants, so such a forward runs as in the default mode, with differentiable folds)."""
    if units.wants_grad(model):
        return None
    return frozen.folds_of(model)


def forward(model: nn.Module, x: Tensor) -> Tensor:
    """A resnet_ext ResNet's forward where fusion is enabled (see `units.enabled`)."""
    if x.device.type == "cpu" and not torch.compiler.is_compiling():
        with cpu.model_memory(x):
            return _forward(model, x)
    return _forward(model, x)


def _forward(model: nn.Module, x: Tensor) -> Tensor:
    if (x.is_cuda and cuda.wanted(model)
            and not (model.training or torch.compiler.is_compiling() or torch.jit.is_tracing())):
        folds = frozen_folds(model)
        if folds is not None:
            out = cuda.forward_graphs(model, x, folds)
            if out is not None:
                return out
    if x.is_cuda and x.dim() == 4 and (not model.training or units.train_fused(x)):
        x = x.contiguous(memory_format=torch.channels_last)  # the fused kernels are NHWC
    if torch.compiler.is_compiling():  # each unit folds in the graph, which the compiler fuses
        return module_path(model, x)
    if x.is_cuda and not model.training and on_cuda.on:  # opt-in: the recorded sequence of fused units
        out = cuda.forward_fused(model, x, frozen_folds(model))
        if out is not None:
            return out
    if not model.training and x.device.type == "cpu":
        folds = frozen_folds(model)
        if folds is not None and ops.onednn_takes(x.dtype):  # (a bf16 model where oneDNN has no bf16: unfolded)
            out = cpu.forward_frozen(model, x, folds)  # checks its input itself (NOT_FINITE), before anything runs
            if out is cpu.NOT_FINITE or (out is None and not torch.jit.is_tracing() and x.is_floating_point()
                                         and not frozen_input_ok(x)):
                # oneDNN's fused ReLU turns NaN into 0 (as compile+freezing does) and Winograd overflows earlier
                # (`cpu.FROZEN_INPUT_LOG2`); the default mode (BN unfolded after the stock conv) computes as
                # torchvision does: this input runs that, not the folds.
                out = cpu.forward_default(model, x)
                if out is not None:
                    return out
                with units.forward_state(None):  # a gradient may be wanted: each unit unfolded on its own
                    return module_path(model, x)
        else:
            out = cpu.forward_default(model, x)
        if out is not None:
            return out
    with units.forward_state(forward_state(model, x)):
        return module_path(model, x)


def _affine(model: nn.Module, x: Tensor, pairs) -> Optional[dict]:
    """Every unit's BN scale and shift for input x, in one batch, as (conv, bn) -> units.Affine; None for BNs on
    mixed devices or dtypes (each unit then computes its own, or meets torchvision's error) or that ATen's batch
    norm refuses for x (each unit meets torchvision's error)."""
    homes = {(t.device, t.dtype) for c, b in pairs for t in (c.weight, b.running_mean, b.running_var)}
    if len(homes) != 1:
        return None
    # The memo lives with the model: not from the forwards' reused memory (it would stay there after the model).
    with torch.no_grad(), cpu.reused_memory(False):
        affine = ops.bn_affine_pairs(pairs, conv_bias=False, input_dtype=x.dtype, memo=_state.of(model).memo)
    if affine is None:
        return None
    scales, shifts = affine
    return {p: units.Affine(sc, sh, units.bn_sources(p[1])) for p, sc, sh in zip(pairs, scales, shifts)}


def module_path(model: nn.Module, x: Tensor) -> Tensor:
    """The module path: the stem unit, the max pool, the layers (each block through its own forward), the head."""
    if not model.training and units.unfolds(x) and _nchw(model, x):  # as the blocks (`enabled`): the modules
        units.count("modules")
        x = model.relu(model.bn1(model.conv1(x)))
    else:
        x = units.unit(model.conv1, model.bn1, model.relu, x)
    x = ops.max_pool(model.maxpool, x)
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        x = layer(x)
    return structure.head(model, x)


def _unfolded_pairs(model: nn.Module) -> list:
    """The (conv, bn) pairs whose BN scale and shift a CPU module-path forward computes in one batch: the recorded
    structure's where the model is still it but for hooks in the body (a hooked pair's tensors are as recorded, so
    the batch may take it; its unit runs through its modules), else the foldable ones of a walk over the model."""
    s = _state.of(model).structure  # recorded by this forward's `structure.of`, if at all: not walked again here
    return s.pairs if s is not None and s.state(model) != structure.CHANGED else units.model_pairs(model)


def forward_state(model: nn.Module, x: Tensor) -> Optional[units.Forward]:
    """This forward's BN folds: the frozen ones (eager only), else all of them, now, in one batch; where BN is
    applied unfolded (`units.unfolds`: eager on the CPU) every unit's scale and shift instead."""
    if model.training:
        return None
    folds = None if torch.jit.is_tracing() else frozen_folds(model)
    if folds is not None:
        if not units.unfolds(x):
            return units.Forward(folds)
        if _nchw(model, x):  # the blocks run torchvision's code (`enabled`); the stem computes its own
            return units.Forward(folds)
        # On the CPU a unit whose fold does not apply (an NCHW map: the folds are channels_last) runs unfolded, on
        # this batch of scales and shifts (a frozen model needs no gradient here: `frozen_folds`).
        return units.Forward({**folds, **(_affine(model, x, _unfolded_pairs(model)) or {})})
    if units.unfolds(x):  # every unit's BN scale and shift, in one batch (used where no gradient is wanted)
        if _nchw(model, x):  # as above
            return None
        affine = _affine(model, x, _unfolded_pairs(model))
        return None if affine is None else units.Forward(affine)
    pairs = units.model_pairs(model)
    with torch.set_grad_enabled(units.wants_grad(model, x)):
        folded = ops.fold_pairs(pairs, channels_last=ops.wants_channels_last(x))
    return units.Forward({(conv, bn): units.Fold(*f, units.bn_sources(bn, conv))
                          for (conv, bn), f in zip(pairs, folded)})
