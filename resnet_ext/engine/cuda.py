"""The CUDA engine (opt-in until a GPU run verifies it): a stock model's eval forward as its recorded units
(`structure.Structure`), each one `conv_bn_act` call on the frozen folds, on this forward's batched fold, or
(`switches.unfolded_bn`) on the unfolded weight with BN as fp32 scale and shift (`plan_weights`, `run`):
the same ops as the module path (`units.unit` per unit) without the module tree's host time
(`switches.on_cuda`); and the frozen mode's CUDA graphs of that forward (`freeze(model, cuda_graphs=True)`).

The graphs: the frozen forward is captured once per input signature (shape, strides, dtype, device) and replayed
after, so a small batch pays one graph launch instead of the host time of ~50 op calls. Opt-in until a GPU run has
verified and timed it (benchmarks/gpu_check.sh --only graphs). A forward replays only where nothing can tell the
difference (`eager_reason`): frozen, no gradient wanted, no tracer, compiler or autocast, the stock structure
without hooks (`structure.of`), the default stream, no capture already under way. Everything else runs eagerly.
The caller owns what a replay returns (a copy of the graph's output). The graphs hold the frozen folds' memory, so
whatever drops the folds (`freeze` again, `.to()`, `load_state_dict`, `train()`, `unfreeze`) drops the graphs
(`state.ExtState.invalidate`).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from .. import ops
from ..switches import fused_stem, unfolded_bn
from . import state as _state
from . import structure, units
from .structure import Unit


# --------------------------------------------------------------------------------------------------------------
# The fused plan
# --------------------------------------------------------------------------------------------------------------

def usable_fused(x: Tensor) -> bool:
    """An eager input the fused units take as the module path would: 4-d, fp32/fp16/bf16, not empty, no gradient
    wanted, no tracer and no autocast (under which the module path runs the stock modules)."""
    return (x.dim() == 4 and x.dtype in (torch.float32, torch.float16, torch.bfloat16) and x.numel() > 0
            and not torch.is_grad_enabled() and not torch.jit.is_tracing()
            and not torch.is_autocast_enabled(x.device.type))


Weights = Tuple[Tensor, Optional[Tensor], Optional[Tensor], Optional[Tensor]]  # weight, bias, scale, shift


def run(model: nn.Module, s: structure.Structure, x: Tensor, wbs: List[Weights]) -> Tensor:
    """The forward with unit i of `s.units` one `conv_bn_act` call on wbs[i] (`plan_weights`)."""
    it = iter(wbs)

    def unit(u: Unit, y: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        w, b, scale, shift = next(it)
        padding, stride, dilation, groups = u.args
        return torch.ops.resnet_ext.conv_bn_act(y, w, b, residual, stride, padding, dilation,
                                                u.relu or residual is not None, groups, scale, shift)

    if takes_stem_pool(model, s.stem, x):
        x = stem_pool(x, *next(it))
    else:
        x = ops.max_pool(model.maxpool, unit(s.stem, x))
    for head, ds, tail in s.blocks:
        y = x
        for u in head:
            y = unit(u, y)
        x = unit(tail, y, x if ds is None else unit(ds, x))  # the downsample's unit comes before the tail's in wbs
    return structure.head(model, x)


STEM_POOL = ((3, 3), (2, 2), (1, 1), (1, 1))  # the max pool stem_pool fuses: kernel, stride, padding, dilation


def takes_stem_pool(model: nn.Module, stem: Unit, x: Tensor) -> bool:
    """Whether `fused_stem(True)` and the stem and pool are the ones `stem_pool` computes: a 16-bit input, conv 7x7
    stride 2 padding 3 over 3 channels to 64 without groups or dilation, ReLU, a plain max pool 3x3/2 padding 1."""
    return (fused_stem.on and x.dtype in (torch.float16, torch.bfloat16) and stem.relu
            and stem.geometry == ((3, 3), (2, 2), (1, 1), 1) and tuple(stem.conv.weight.shape) == (64, 3, 7, 7)
            and ops.plain_max_pool(model.maxpool) == STEM_POOL)


def stem_pool(x: Tensor, w: Tensor, b: Optional[Tensor], scale: Optional[Tensor], shift: Optional[Tensor]) -> Tensor:
    """The stem unit and the max pool as one `stem_pool` call: on the unfolded weight with its scale and shift, or
    on the folded weight with scale 1 and the fold's bias as the shift."""
    units.count("stem_pool")
    if scale is None:
        scale, shift = torch.ones(w.shape[0], device=w.device), b
    return torch.ops.resnet_ext.stem_pool(x, w, scale, shift)


def takes_unfolded(x: Tensor) -> bool:
    """Whether `unfolded_bn(True)` and a 16-bit input: BN then runs as fp32 scale and shift on the unfolded weight."""
    return unfolded_bn.on and x.dtype in (torch.float16, torch.bfloat16)


def plan_weights(s: structure.Structure, folds: Optional[Dict[nn.Module, object]],
                 x: Tensor) -> Optional[List[Weights]]:
    """Each unit's (weight, bias, scale, shift) for `run`. `takes_unfolded`: the conv's own weight, BN as the fp32
    (scale, shift) of all units in one batched pass (`ops.bn_affine_pairs`, now: no per-forward weight fold and no
    16-bit rounding of weight * scale). Else the frozen folds if given (None where they are not these modules'),
    else this forward's folds, all units in one batch (`ops.fold_pairs`, as the module path folds them). None too
    where ATen's BN would refuse a BN's dtypes for the input (`ops.bn_dtypes_ok`)."""
    fmt = torch.channels_last if ops.wants_channels_last(x) else torch.contiguous_format
    if takes_unfolded(x):
        affine = ops.bn_affine_pairs([(u.conv, u.bn) for u in s.units], input_dtype=x.dtype)
        if affine is None:  # BN dtypes ATen's batch norm refuses: its error comes from the module path
            return None
        return [(u.conv.weight.contiguous(memory_format=fmt), None, sc, sh) for u, sc, sh in zip(s.units, *affine)]
    if folds is None:
        wbs = ops.fold_pairs([(u.conv, u.bn) for u in s.units], channels_last=fmt == torch.channels_last,
                             input_dtype=x.dtype)
    else:
        wbs = _frozen_wbs(s, folds, x.dtype)
    return None if wbs is None else [(w, b, None, None) for w, b in wbs]


def _frozen_wbs(s: structure.Structure, folds: Dict[nn.Module, object], dtype: torch.dtype):
    """Each unit's frozen (weight, bias), or None where a fold is missing, of other modules or of another dtype."""
    wbs = []
    for u in s.units:
        f = folds.get(u.conv)
        if f is None or not f.belongs_to(u.conv, u.bn) or f.weight.dtype != dtype:
            return None
        wbs.append((f.weight, f.bias))
    return wbs


def forward_fused(model: nn.Module, x: Tensor, folds: Optional[Dict[nn.Module, object]]) -> Optional[Tensor]:
    """The eval forward with every unit one `conv_bn_act` call (`plan_weights`: folded, or unfolded with BN as fp32
    scale and shift). None where this does not apply (a gradient may be wanted, the structure changed, folds that
    are not these modules'). Runs on any device the op runs on (the CPU runs the op's stock composition); the
    models use it on CUDA."""
    if not usable_fused(x):
        return None
    s = structure.of(model, x.dtype, x.shape[1])
    if s is None or not structure.head_plain(model):  # the head's hooks would see the NHWC maps: the module path
        return None
    wbs = plan_weights(s, folds, x)
    if wbs is None:
        return None
    out = run(model, s, x, wbs)
    units.count("flat_forwards")
    return out


# --------------------------------------------------------------------------------------------------------------
# The frozen mode's CUDA graphs
# --------------------------------------------------------------------------------------------------------------

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
    if units.wants_grad(model, x):
        return "gradients may be needed", None
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return "traced or compiled", None
    if torch.is_autocast_enabled("cuda"):
        return "autocast", None
    s = structure.of(model, x.dtype, x.shape[1]) if x.dim() == 4 else None
    if s is None:
        return "hooks, swapped modules or an input the model does not take", None
    if not s.linear_fc:  # a custom head's Python would not rerun on a replay
        return "an fc other than nn.Linear", s
    if not structure.head_plain(model):  # nor would the head's hooks
        return "hooks on the average pool or the fc", s
    if not x.is_cuda:
        return "not a CUDA input", s
    if torch.cuda.is_current_stream_capturing():
        return "a capture is already under way", s
    if torch.cuda.current_stream(x.device) != torch.cuda.default_stream(x.device):
        return "a non-default stream", s
    return None, s


def _capture(fn: Callable[[Tensor], Tensor], x: Tensor, pool) -> tuple:
    static_in = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device)
    static_in.copy_(x)
    stream = torch.cuda.current_stream(x.device)
    side = torch.cuda.Stream(x.device)
    side.wait_stream(stream)
    with torch.cuda.stream(side):  # warm-up outside the capture: kernel choices, cuDNN plans, lazy inits
        fn(static_in)
    stream.wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        static_out = fn(static_in)
    return graph, static_in, static_out


def forward_graphs(model: nn.Module, x: Tensor, folds: Dict[nn.Module, object]) -> Optional[Tensor]:
    """The frozen forward of `x` by a CUDA graph (the fused plan on the frozen folds, or with `unfolded_bn` on the
    weights and BN statistics as they are at each replay; captured on the first call of a signature), or None
    where it runs eagerly (graphs off, `eager_reason`, folds that are not these modules', a failed capture)."""
    if not wanted(model):
        return None
    st = _state.peek(model)
    reason, s = _check(model, x)
    if reason is not None:
        return None
    if not takes_unfolded(x) and _frozen_wbs(s, folds, x.dtype) is None:
        return None
    cache = st.graphs
    if cache is None:
        cache = st.graphs = GraphCache()
    key = signature(x) + (fused_stem.on, unfolded_bn.on)  # the plan's switches: another plan, another graph
    entry = cache.get(key)
    if isinstance(entry, Graph) and (entry.folds is not folds or entry.structure is not s):
        entry = None  # captured on other folds or another recorded structure
    if entry is None:
        try:
            # Never inference tensors (a capture under inference_mode), which a later call outside it could not
            # copy into; torch.no_grad is what the captured forward runs under (no gradient is wanted here).
            with torch.inference_mode(False), torch.no_grad():
                # The weights inside the capture: unfolded, the BN scale and shift are computed by the graph.
                def forward(t: Tensor) -> Tensor:
                    t = t.contiguous(memory_format=torch.channels_last)
                    return run(model, s, t, plan_weights(s, folds, t))

                graph, static_in, static_out = _capture(forward, x, cache.pool)
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
