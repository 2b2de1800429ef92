"""A module tree rebuilt with some classes swapped, sharing every Parameter and buffer object (see convert.py)."""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Optional, Type

from torch import nn

from .engine.state import KEY as _STATE  # resnet_ext's per-model state: a converted model starts without it


def recast_tree(m: nn.Module, classes: Dict[Type[nn.Module], Type[nn.Module]],
                memo: Optional[Dict[int, nn.Module]] = None) -> nn.Module:
    """`m` rebuilt; a module found at several places in the tree (a ReLU shared by the stem and a custom fc) is
    rebuilt once and stays shared, so that a hook registered on it later meets every call, as in the source."""
    memo = {} if memo is None else memo
    if id(m) in memo:
        return memo[id(m)]
    cls = classes.get(type(m), type(m))
    new = memo[id(m)] = cls.__new__(cls)
    state = {k: (v.copy() if isinstance(v, dict) else v) for k, v in m.__dict__.items() if k != _STATE}
    state["_modules"] = OrderedDict((name, None if c is None else recast_tree(c, classes, memo))
                                    for name, c in m._modules.items())
    new.__dict__.update(state)
    return new


def convert(model: nn.Module, source, target) -> nn.Module:
    if type(model) is not source[0]:
        raise TypeError(f"expected a {source[0].__module__}.{source[0].__name__}, got {type(model).__name__} (a "
                        f"subclass may override forward, which the other library's class would lose)")
    return recast_tree(model, dict(zip(source, target)))
