"""CUDA graphs for the frozen mode: `freeze(model, cuda_graphs=True)` captures the frozen forward once per input
signature (shape, strides, dtype, device) and replays it after, so a small batch pays one graph launch instead of
the host time of ~50 op calls.

Opt-in until a GPU run has verified and timed it (benchmarks/gpu_check.sh --only graphs). A forward replays only
where nothing can tell the difference (`eager_reason`): frozen, no gradient wanted, no tracer, compiler or
autocast, the stock structure without hooks (`structure.structure`), the default stream, no capture already under way.
Everything else runs eagerly. The caller owns what a replay returns (a copy of the graph's output). The graphs
hold the frozen folds' memory, so whatever drops the folds (`freeze` again, `.to()`, `load_state_dict`, `train()`,
`unfreeze`) drops the graphs (`state.ExtState.invalidate`).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Dict, Optional

import torch
from torch import Tensor, nn

from . import state as _state
from . import structure, units

LIMIT = 8  # graphs kept per model (one per input signature), least recently used dropped first


class Graph:
    """One captured forward: the graph, its static input and output, and what it was captured on."""

    __slots__ = ("graph", "static_in", "static_out", "folds", "structure")

    def __init__(self, graph, static_in: Tensor, static_out: Tensor, folds, structure):
        self.graph, self.static_in, self.static_out = graph, static_in, static_out
        self.folds, self.structure = folds, structure


class GraphCache:
    """A model's graphs by input signature (LRU, `LIMIT`), and the memory pool they share. A signature whose
    capture failed maps to its error message: that input runs eagerly from then on."""

    def __init__(self):
        self.entries: "OrderedDict[tuple, object]" = OrderedDict()
        self.pool = None

    def get(self, key: tuple):
        entry = self.entries.get(key)
        if entry is not None:
            self.entries.move_to_end(key)
        return entry

    def put(self, key: tuple, entry) -> None:
        self.entries[key] = entry
        self.entries.move_to_end(key)
        while len(self.entries) > LIMIT:
            self.entries.popitem(last=False)


def wanted(model: nn.Module) -> bool:
    """Whether the model is frozen with `cuda_graphs=True` (a cheap check, before any other)."""
    st = _state.peek(model)
    return st is not None and bool(st.frozen) and st.cuda_graphs


def signature(x: Tensor) -> tuple:
    return tuple(x.shape), tuple(x.stride()), x.dtype, x.device


def eager_reason(model: nn.Module, x: Tensor) -> Optional[str]:
    """Why this forward of a frozen model must run eagerly, or None where it may replay a graph. The checks that
    need no GPU come first (tested on the CPU)."""
    return _check(model, x)[0]


def _check(model: nn.Module, x: Tensor) -> tuple:
    """(eager_reason, the recorded structure.Structure or None)."""
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in model.parameters())):
        return "gradients may be needed", None
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return "traced or compiled", None
    if torch.is_autocast_enabled("cuda"):
        return "autocast", None
    s = structure.structure(model, x) if x.dim() == 4 else None
    if s is None:
        return "hooks, swapped modules or an input the model does not take", None
    if not x.is_cuda:
        return "not a CUDA input", s
    if torch.cuda.is_current_stream_capturing():
        return "a capture is already under way", s
    if torch.cuda.current_stream(x.device) != torch.cuda.default_stream(x.device):
        return "a non-default stream", s
    return None, s


def _capture(run: Callable[[Tensor], Tensor], x: Tensor, pool) -> tuple:
    static_in = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device)
    static_in.copy_(x)
    stream = torch.cuda.current_stream(x.device)
    side = torch.cuda.Stream(x.device)
    side.wait_stream(stream)
    with torch.cuda.stream(side):  # warm-up outside the capture: kernel choices, cuDNN plans, lazy inits
        run(static_in)
    stream.wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        static_out = run(static_in)
    return graph, static_in, static_out


def forward(model: nn.Module, x: Tensor, folds: Dict[nn.Module, object],
            run: Callable[[Tensor], Tensor]) -> Optional[Tensor]:
    """The frozen forward of `x` by a CUDA graph (`run(x)`, the eager frozen forward, captured on the first call of
    a signature), or None where it runs eagerly (graphs off, `eager_reason`, a failed capture)."""
    if not wanted(model):
        return None
    st = _state.peek(model)
    reason, s = _check(model, x)
    if reason is not None:
        return None
    cache = st.graphs
    if cache is None:
        cache = st.graphs = GraphCache()
    key = signature(x)
    entry = cache.get(key)
    if isinstance(entry, Graph) and (entry.folds is not folds or entry.structure is not s):
        entry = None  # captured on other folds or another recorded structure
    if entry is None:
        try:
            # Never inference tensors (a capture under inference_mode), which a later call outside it could not
            # copy into; torch.no_grad is what the captured forward runs under (no gradient is wanted here).
            with torch.inference_mode(False), torch.no_grad():
                graph, static_in, static_out = _capture(run, x, cache.pool)
        except Exception as e:  # noqa: BLE001  (whatever cannot be captured runs eagerly, as before)
            cache.put(key, f"capture failed: {type(e).__name__}: {e}")
            return None
        cache.pool = graph.pool()
        entry = Graph(graph, static_in, static_out, folds, s)
        cache.put(key, entry)
        units.count("cuda_graph_captures")
    elif not isinstance(entry, Graph):
        return None
    with torch.inference_mode(False):
        entry.static_in.copy_(x)
    entry.graph.replay()
    units.count("cuda_graph_replays")
    return entry.static_out.clone()  # the caller's own tensor: the next replay overwrites static_out
