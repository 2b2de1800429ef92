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

from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from . import fusion

_CACHE_LIMIT = 8   # programs (per input shape, dtype and layout) kept per model
_DTYPES = (torch.float32, torch.bfloat16)


class Unit:
    """One conv + BN (+ ReLU) of the flat forward: the modules and the conv's geometry."""

    __slots__ = ("conv", "bn", "relu", "args")

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, relu: bool):
        self.conv, self.bn, self.relu = conv, bn, relu
        self.args = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)


class Structure:
    """What the flat forward assumed of the model when it was recorded, and the units in forward order."""

    def __init__(self, model: nn.Module):
        from .models import BasicBlock, Bottleneck  # models imports this module
        self.stem = Unit(model.conv1, model.bn1, True)
        self.blocks: List[Tuple[List[Unit], Optional[Unit], Unit]] = []  # (head units, downsample, tail)
        for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
            for b in layer:
                names = ("1", "2") if type(b) is BasicBlock else ("1", "2", "3")
                units = [Unit(getattr(b, "conv" + n), getattr(b, "bn" + n), True) for n in names]
                ds = None if b.downsample is None else Unit(b.downsample[0], b.downsample[1], False)
                self.blocks.append((units[:-1], ds, units[-1]))
        self.units = [self.stem] + [u for head, ds, tail in self.blocks for u in head + ([ds] if ds else []) + [tail]]
        self.modules = list(model.modules())
        self.types = [type(m) for m in self.modules]
        self.children = [(m, tuple(m._modules.values())) for m in self.modules if m._modules]
        self.weights = [(u.conv, u.conv.weight, tuple(u.args[:3]) + (u.conv.groups, u.conv.padding_mode))
                        for u in self.units]

    def matches(self, model: nn.Module) -> bool:
        """Whether the model is still exactly what was recorded: same modules in the same places, same types, no
        hooks, same conv weight objects and geometry, BNs in eval mode with running statistics."""
        for m, kids in self.children:
            if tuple(m._modules.values()) != kids:
                return False
        for m, t in zip(self.modules, self.types):
            if (type(m) is not t or m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                    or m._backward_pre_hooks):
                return False
        for conv, w, geometry in self.weights:
            if (conv.weight is not w or conv.bias is not None
                    or (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups,
                        conv.padding_mode) != geometry):
                return False
        return all(not u.bn.training and u.bn.running_mean is not None and u.bn.running_var is not None
                   for u in self.units)


def stock(model: nn.Module) -> bool:
    """Whether the model is a stock resnet_ext ResNet: torchvision's module types everywhere, plain convs/BNs."""
    from .models import BasicBlock, Bottleneck
    if model.training or not fusion._hookless(model):
        return False
    if not (type(model.relu) is nn.ReLU and type(model.maxpool) is nn.MaxPool2d
            and type(model.avgpool) is nn.AdaptiveAvgPool2d and type(model.fc) is nn.Linear
            and fusion.foldable(model.conv1, model.bn1)):
        return False
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        if type(layer) is not nn.Sequential:
            return False
        for b in layer:
            if type(b) not in (BasicBlock, Bottleneck) or type(b.relu) is not nn.ReLU:
                return False
            names = ("1", "2") if type(b) is BasicBlock else ("1", "2", "3")
            if not all(fusion.foldable(getattr(b, "conv" + n), getattr(b, "bn" + n)) for n in names):
                return False
            ds = b.downsample
            if ds is not None and not (type(ds) is nn.Sequential and len(ds) == 2 and fusion.foldable(ds[0], ds[1])):
                return False
    return all(fusion._hookless(m) for m in model.modules())  # (train mode matters only for the BNs: foldable)


# --------------------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------------------

_STRUCTURE = "_resnet_ext_structure"   # not pickled
_PROGRAMS = "_resnet_ext_programs"     # not pickled: (folds, structure, {input key: [(w, b) per unit]})


def _conv(u: Unit, x: Tensor, wb) -> Tensor:
    if wb is None:  # unfolded (default mode, where the fold does not pay): torchvision's ops
        out = u.bn(u.conv(x))
        return torch.relu_(out) if u.relu else out
    return torch.ops.mkldnn._convolution_pointwise.default(x, wb[0], wb[1], *u.args, "relu" if u.relu else "none",
                                                           [], "")


def _tail(u: Unit, y: Tensor, residual: Tensor, wb) -> Tensor:
    """relu(bn(conv(y)) + residual), written into `residual` (which only this forward holds)."""
    if wb is None:
        out = u.bn(u.conv(y))
        out += residual
        return torch.relu_(out)
    return torch.ops.mkldnn._convolution_pointwise_.binary(residual, y, wb[0], wb[1], *u.args, "add", 1.0, "relu",
                                                            [], "")


def _run(model: nn.Module, s: Structure, x: Tensor, wb) -> Tensor:
    """The forward, with `wb(unit, x)` giving each unit's (weight, bias), or None to run it unfolded, in the order
    of `s.units`."""
    x = _conv(s.stem, x, wb(s.stem, x))
    x = model.maxpool(x)
    for head, ds, tail in s.blocks:
        y = x
        for u in head:
            y = _conv(u, y, wb(u, y))
        residual = x if ds is None else _conv(ds, x, wb(ds, x))
        x = _tail(tail, y, residual, wb(tail, y))
    x = model.avgpool(x)
    return model.fc(torch.flatten(x, 1))


def structure(model: nn.Module, x: Tensor) -> Optional[Structure]:
    """The model's recorded structure if it still matches, else a new one if the model is stock, else None; None
    also where `x` is not of the model's dtype and channels (the module path gives torchvision's errors)."""
    s = model.__dict__.get(_STRUCTURE)
    if s is None or not s.matches(model):
        s = model.__dict__[_STRUCTURE] = Structure(model) if stock(model) else None
    if s is None or x.dtype != s.stem.conv.weight.dtype or x.shape[1] != s.stem.conv.in_channels:
        return None
    return s


def usable(x: Tensor) -> bool:
    """Eager CPU inference on a 4-d fp32/bf16 input that needs no gradient."""
    return (x.device.type == "cpu" and x.dim() == 4 and x.dtype in _DTYPES and x.numel() > 0
            and not (torch.is_grad_enabled() and x.requires_grad) and not torch.jit.is_tracing()
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)


def forward_frozen(model: nn.Module, x: Tensor, folds: Dict[nn.Module, object]) -> Optional[Tensor]:
    """The frozen model's forward on prepacked weights, or None where the flat forward does not apply."""
    if not usable(x):
        return None
    s = structure(model, x)
    if s is None:
        return None
    cached = model.__dict__.get(_PROGRAMS)
    if cached is None or cached[0] is not folds or cached[1] is not s:
        # The folds must belong to these modules (a conv or weight replaced since `freeze` has none).
        own = all(getattr(folds.get(u.conv), "bn", None) is u.bn and folds[u.conv].param is u.conv.weight
                  for u in s.units)
        cached = model.__dict__[_PROGRAMS] = (folds, s, {} if own else None)
    if cached[2] is None or x.dtype != folds[s.stem.conv].weight.dtype:
        return None
    programs = cached[2]
    key = (tuple(x.shape), x.dtype, x.stride())
    program = programs.get(key)
    if program is None:  # first call of this input: pack each unit's weight for its input size
        if len(programs) >= _CACHE_LIMIT:
            programs.clear()
        program = []

        def wb(u, y):
            program.append((folds[u.conv].packed_for(u.conv, y), folds[u.conv].bias))
            return program[-1]

        out = _run(model, s, x, wb)
        programs[key] = program
    else:
        it = iter(program)
        out = _run(model, s, x, lambda u, y: next(it))
    fusion.count("onednn_prepacked", len(s.units))
    fusion.count("flat_forwards")
    return out


_PLANS = "_resnet_ext_flat_plans"  # not pickled: per input, which units' folds pay (shapes only, never stale)


def forward_default(model: nn.Module, x: Tensor) -> Optional[Tensor]:
    """The default mode's forward: the BN folds that pay for this input recomputed now in one batch, the other
    units unfolded; or None where the flat forward does not apply (a gradient may be needed, ...)."""
    if not usable(x) or torch.is_grad_enabled():
        return None
    s = structure(model, x)
    if s is None:
        return None
    plans = model.__dict__.setdefault(_PLANS, {})
    key = (tuple(x.shape), x.dtype, x.stride())
    plan = plans.get(key)
    if plan is None or plan[0] is not s:  # learn on this call which folds pay, from the units' input shapes
        if len(plans) >= _CACHE_LIMIT:
            plans.clear()
        pays = {}
        cl = fusion.wants_channels_last(x)

        def wb(u, y):
            if not fusion.fold_pays(u.conv, y):
                return None
            pays[u.conv] = True
            return fusion.fold_pairs([(u.conv, u.bn)], channels_last=cl)[0]

        out = _run(model, s, x, wb)
        plans[key] = (s, [(u.conv, u.bn) for u in s.units if u.conv in pays], cl)
    else:
        folds = dict(zip((c for c, _ in plan[1]), fusion.fold_pairs(plan[1], channels_last=plan[2])))
        out = _run(model, s, x, lambda u, y: folds.get(u.conv))
        pays = folds
    fusion.count("flat_forwards")
    fusion.count("onednn", len(pays))
    if len(pays) < len(s.units):
        fusion.count("unfolded", len(s.units) - len(pays))
    return out
