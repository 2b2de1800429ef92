"""A stock ResNet recorded once as a sequence of units (`Structure`), which the device engines (`cpu`, `cuda`) run
as one flat sequence of calls, without the module tree in between, each unit as their plan for the input says.

A plan runs only where nothing can observe the difference (`Structure.matches`): the model, every submodule and
every conv/BN are torchvision's stock types in eval mode, in the structure they had when it was recorded, no module
of the body has a hook or a forward set on the instance (the model's own and the head's may: `outside_body`), and
no global hook, tracer, compiler or transform is active. Then no caller can hold a block's output except the next
block, so a block's last convolution may add its residual in place (the CPU's oneDNN sum post-op into the identity
or the downsample's output). Anything else runs the module-by-module path (`units`); a model whose body has hooks
keeps its record (`Structure.state` HOOKED), so that its forwards find that out cheaply.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from .. import ops
from .._C_loader import _C
from . import state as _state
from . import units



class Unit:
    """One conv + BN (+ ReLU) of the flat forward: the modules and the conv's geometry."""

    __slots__ = ("conv", "bn", "relu", "args", "geometry")

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, relu: bool):
        self.conv, self.bn, self.relu = conv, bn, relu
        self.args = ops.onednn_args(conv)
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
        self.pairs = list(dict.fromkeys((u.conv, u.bn) for u in self.units))  # once each (a block may sit twice)
        self.main = [self.stem] + [u for head, _, tail in self.blocks for u in head + [tail]]  # not the downsamples
        # Each parent's children; the model's own apart, given to `state` by its caller: the model holds this
        # record (its state object), so a reference back would keep a dropped model alive until the cycle collector.
        self.root_children = tuple(model._modules.values())
        self.children = [(m, tuple(m._modules.values())) for m in model.modules() if m._modules and m is not model]
        # The body's modules: their types, and no hooks (the head's may have them: `outside_body`).
        head = outside_body(model)
        self.modules = [m for m in model.modules() if id(m) not in head]
        self.types = [type(m) for m in self.modules]
        self.convs = [(u.conv, u.conv.weight, u.conv.bias) + u.geometry for u in self.units]
        # The frozen folds were made with these eps and tensors (FrozenUnit.belongs_to).
        self.bns = [(u.bn, u.bn.eps, *units.bn_tensors(u.bn)) for u in self.units]
        self.linear_fc = type(model.fc) is nn.Linear  # else a custom head (`stock`)

    def state(self, model: nn.Module) -> int:
        """MATCHES where the model is still exactly what was recorded: same modules in the same places, same types,
        no hooks or instance-level forward in the body (`outside_body`), same conv weight and bias objects (where
        nn.Module's attribute lookup finds them: an instance attribute first, else the store) and geometry, BNs in
        eval mode with the same eps, weight, bias and running statistics objects; HOOKED where hooks or instance
        forwards in the body are the only difference (the module path runs, on the recorded units); else CHANGED.
        This runs on every forward: the loops are in C (`_C.structure_state`, the same reads)."""
        state = _C.structure_state([(model, self.root_children), *self.children], self.modules, self.types,
                                   self.convs, self.bns, units.PATCHED)
        if (not stem_pool_ok(model.maxpool)
                or type(model.avgpool) is not nn.AdaptiveAvgPool2d or (type(model.fc) is nn.Linear) != self.linear_fc):
            return CHANGED
        return state

    def matches(self, model: nn.Module) -> bool:
        """Whether the flat forward applies: `state` is MATCHES."""
        return self.state(model) == MATCHES


CHANGED, MATCHES, HOOKED = 0, 1, 2  # Structure.state (the values of _C.structure_state)


def outside_body(model: nn.Module) -> set:
    """The ids of the modules whose hooks (or forwards set on the instance) the flat forward honours: the model
    itself (its hooks run around its forward), the average pool and the fc with its submodules (the head runs
    through them where they have any: `head_plain`, `cpu.logits`); not a module the body also calls (a ReLU
    shared with the fc), whose hooks the body's calls must meet."""
    head = (model.avgpool, model.fc)
    body = {id(m) for c in model.children() if all(c is not h for h in head) for m in c.modules()}
    return {id(model)} | {id(m) for h in head for m in h.modules() if id(m) not in body}


def head(model: nn.Module, features: Tensor) -> Tensor:
    """The average pool, then the fc, as torchvision's forward calls them: the fc read after the pool ran (a hook
    there may replace it)."""
    pooled = torch.flatten(model.avgpool(features), 1)
    return model.fc(pooled)


def head_plain(model: nn.Module) -> bool:
    """No hooks or instance forwards on the average pool or anywhere in the fc (the flat forward may then compute
    the head as it likes: one op, oneDNN's linear, a captured graph)."""
    return units.hookless(model.avgpool) and all(units.hookless(m) for m in model.fc.modules())


def stem_pool_ok(pool: nn.Module) -> bool:
    """A max pool after the stem the flat forward takes: nn.MaxPool2d without indices (with them the next conv gets a
    tuple: torchvision's error), or nn.Identity (torchvision's ResNets for small images, e.g. CIFAR's 32x32, drop
    the pool and take a 3x3 stride-1 stem conv)."""
    return (type(pool) is nn.MaxPool2d and not pool.return_indices) or type(pool) is nn.Identity


def pool_key(pool: nn.Module) -> Optional[tuple]:
    """The stem pool's parameters (what a plan made for them depends on), None for nn.Identity."""
    if type(pool) is nn.Identity:
        return None
    return tuple(tuple(v) if isinstance(v, list) else v  # hashable: F.max_pool2d takes lists too
                 for v in (pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode))


def stock(model: nn.Module) -> bool:
    """Whether the model has a stock resnet_ext ResNet's structure, what `Structure` records: torchvision's module
    types everywhere, plain convs/BNs; the fc may be any module (a fine-tuned head such as Dropout + Linear): it
    runs as a module on the pooled features, which have no layout to show. Hooks and instance forwards may sit
    anywhere (`Structure.state` tells whether they leave the flat forward: on the model itself and on the head,
    `outside_body`, which then runs through its modules), except forward pre-hooks on convs and BNs: legacy
    weight_norm, spectral_norm and pruning compute the weight there on every call, which a record would miss (it
    would go stale on every forward)."""
    if model.training:
        return False
    if not (type(model.relu) is nn.ReLU and stem_pool_ok(model.maxpool)
            and type(model.avgpool) is nn.AdaptiveAvgPool2d and isinstance(model.fc, nn.Module)
            and units.foldable(model.conv1, model.bn1, hooks_ok=True)):
        return False
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        if type(layer) is not nn.Sequential:
            return False
        for b in layer:
            if not units.is_block(b) or type(b.relu) is not nn.ReLU:
                return False
            if not all(units.foldable(c, n, hooks_ok=True) for c, n in units.unit_pairs(b)):
                return False
            ds = b.downsample
            if ds is not None and not (type(ds) is nn.Sequential and len(ds) == 2
                                       and units.foldable(ds[0], ds[1], hooks_ok=True)):
                return False
    return True


def recorded(model: nn.Module) -> Tuple[Optional[Structure], int]:
    """The model's recorded structure (recorded anew where the model changed) and its `Structure.state`; (None,
    CHANGED) where the model is no stock structure. A model with hooks in its body is recorded too (HOOKED), so
    that its forwards find out with the C check, not with `stock`'s walk over every module (resnet50: ~0.5 ms)."""
    st = _state.of(model)
    s = st.structure
    state = s.state(model) if s is not None else CHANGED
    if state == CHANGED:
        s = st.structure = Structure(model) if stock(model) else None
        state = s.state(model) if s is not None else CHANGED
    return (s, state) if state != CHANGED else (None, CHANGED)


def of(model: nn.Module, dtype: torch.dtype, channels: int) -> Optional[Structure]:
    """The model's recorded structure where the flat forward applies (`recorded`: MATCHES), else None; None also for
    an input not of the model's dtype and channels (the module path gives torchvision's errors)."""
    s, state = recorded(model)
    if state != MATCHES or dtype != s.stem.conv.weight.dtype or channels != s.stem.conv.in_channels:
        return None
    return s
