"""The one object that holds everything resnet_ext keeps on a model beside torchvision's own attributes.

It lives under one `__dict__` key (`KEY`), so conversion (`to_torchvision`), pickling and copying need to know
one name, and `invalidate()` is the one place that drops what a weight change makes stale. Only the frozen flag is
pickled and copied (an unpickled or deep-copied frozen model is frozen again and refolds on its next forward); the
caches are rebuilt on demand.
"""
from __future__ import annotations

import os
import threading
import weakref
from typing import Optional

from torch import nn

KEY = "_resnet_ext_state"

# The classes whose forwards the engine runs, registered by resnet_ext.models (`serves`), so that the engine checks
# a module's type without importing the models: "model" (ResNet; subclasses too) and "block" (BasicBlock,
# Bottleneck; exact types only, as a subclass's forward may differ).
SERVED: dict = {"model": [], "block": []}


SERVED_FORWARDS: list = []  # (block class, its forward as defined): `units.enabled`


def serves(kind: str):
    """Class decorator: `@engine.serves("model")` / `@engine.serves("block")`."""
    def register(cls: type) -> type:
        SERVED[kind].append(cls)
        if kind == "block":  # the flat forward never calls it: replaced on the class, the engine steps aside
            SERVED_FORWARDS.append((cls, cls.forward))
        return cls
    return register


def is_model(m: nn.Module) -> bool:
    return isinstance(m, tuple(SERVED["model"]))


def is_block(m: nn.Module) -> bool:
    return type(m) in SERVED["block"]


class ExtState:
    """`frozen`: False, True, or the compute dtype `freeze(model, dtype=...)` asked for; `cuda_graphs`: whether the
    frozen forward on CUDA replays graphs (`freeze(model, cuda_graphs=True)`). The caches: `graphs` (the
    `cuda.GraphCache`, which holds the folds' memory), `folds` (the frozen folds, `frozen.FrozenUnit` per conv),
    `sources` (`_C.FoldSources`: the tensors the folds were made from, checked on every frozen forward), `shared`
    (some of them were in shared memory: no folds then),
    `programs` (the frozen flat forward's per-input programs on those folds), `structure` (`structure.Structure`,
    what the flat forward recorded), `flat_plans` (the default flat forward's per-input unit kinds: chosen from
    shapes and the weights' layouts, dropped with the folds; a weight swapped through `.data` since then is checked
    by the unit that runs it). `structure` depends on module identity only, never on weight values. `memo`: results
    checked against their inputs' bytes on every use (`ops.bn_affine_pairs`), never stale. `lock`: held while the
    frozen folds are made and stored (`freeze`, a forward's refold), so that a forward folding with the settings in
    force before cannot store its folds over a concurrent `freeze`'s."""

    __slots__ = ("frozen", "cuda_graphs", "folds", "sources", "shared", "programs", "graphs", "structure", "flat_plans",
                 "memo", "lock", "__weakref__")

    def __init__(self, frozen=False, cuda_graphs: bool = False):
        self.lock = threading.Lock()
        _STATES.add(self)
        self.frozen, self.cuda_graphs = frozen, cuda_graphs
        self.folds = self.sources = self.programs = self.graphs = self.structure = None
        self.shared = False
        self.flat_plans: dict = {}
        self.memo: dict = {}

    def invalidate(self) -> None:
        """Drops what depends on weight values and layouts: the frozen folds and the programs and graphs made on
        them, and the default mode's plans (which unit kinds pay depends on the weights' layouts, which
        `model.to(memory_format=...)` changes)."""
        self.folds = self.sources = self.programs = self.graphs = None
        self.shared = False
        self.flat_plans = {}

    def __getstate__(self):
        return {"frozen": self.frozen, "cuda_graphs": self.cuda_graphs}

    def __setstate__(self, state):
        self.__init__(state.get("frozen", False), state.get("cuda_graphs", False))

    def __deepcopy__(self, memo):
        return ExtState(self.frozen, self.cuda_graphs)


_STATES: "weakref.WeakSet[ExtState]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A fork copies a lock that another thread held (a `freeze` or a refold under way) locked, and no thread of the
    # child will release it: the child's first forward waited forever. What that thread left half made is dropped
    # as after any interrupted refold (the folds are stored last): the child's forward folds again.
    for s in list(_STATES):
        s.lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def of(model: nn.Module) -> ExtState:
    """The model's state object, made on first use."""
    s = model.__dict__.get(KEY)
    if s is None:
        s = model.__dict__[KEY] = ExtState()
    return s


def peek(model: nn.Module) -> Optional[ExtState]:
    """The model's state object, or None where it has none yet."""
    return model.__dict__.get(KEY)
