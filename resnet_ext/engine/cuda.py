"""The CUDA plan for `structure.run` (opt-in until a GPU run verifies it): a stock model's eval forward as the
recorded sequence of units, each one `conv_bn_act` call on the frozen folds or on this forward's batched fold, the
same ops as the module path (`units.unit` per unit) without the module tree's host time.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import Tensor, nn

from . import units
from .structure import FUSED, run, structure


def usable_fused(x: Tensor) -> bool:
    """An eager input the fused units take as the module path would: 4-d, fp32/fp16/bf16, not empty, no gradient
    wanted, no tracer and no autocast (under which the module path runs the stock modules)."""
    return (x.dim() == 4 and x.dtype in (torch.float32, torch.float16, torch.bfloat16) and x.numel() > 0
            and not torch.is_grad_enabled() and not torch.jit.is_tracing()
            and not torch.is_autocast_enabled(x.device.type))


def forward_fused(model: nn.Module, x: Tensor, folds: Optional[Dict[nn.Module, object]]) -> Optional[Tensor]:
    """The eval forward with every unit one `conv_bn_act` call on a folded weight: the frozen folds if given, else
    this forward's, all units folded now in one batch (`units.fold_pairs`, as the module path folds them). None
    where this does not apply (a gradient may be wanted, the structure changed, folds that are not these modules').
    Runs on any device the op runs on (the CPU runs the op's stock composition); the models use it on CUDA."""
    if not usable_fused(x):
        return None
    s = structure(model, x)
    if s is None:
        return None
    if folds is None:
        folded = units.fold_pairs([(u.conv, u.bn) for u in s.units], channels_last=units.wants_channels_last(x))
        wbs = [(FUSED, w, b) for w, b in folded]
    else:
        wbs = []
        for u in s.units:
            f = folds.get(u.conv)
            if f is None or not f.belongs_to(u.conv, u.bn) or f.weight.dtype != x.dtype:
                return None
            wbs.append((FUSED, f.weight, f.bias))
    it = iter(wbs)
    out = run(model, s, x, lambda u, y: next(it))
    units.count("flat_forwards")
    return out
