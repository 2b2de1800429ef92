"""The frozen CPU mode's convolutions as one oneDNN Graph (#28): the stem, the max pool and every block on the
frozen folds, traced once per input shape and compiled by oneDNN's graph API (PyTorch's LLGA fuser, which ships
with torch's oneDNN). oneDNN then runs the network as a few fused partitions that keep its own blocked layouts
between the convolutions and were compiled once, where the per-unit plan (engine/cpu.py) makes one ATen call per
conv, each creating its oneDNN primitive descriptor anew (about 35 us a call) and handing over NHWC tensors.
Measured on a 2-core AMX Xeon against the per-unit plan, interleaved (benchmarks/cpu_onednn_graph.py, results in
benchmarks/results/2026-12-04-cpu-onednn-graph/): resnet50 bf16 1.42x faster at batch 1, 1.30-1.39x at 2,
1.21-1.24x at 4, 1.10-1.17x at 8 (resnet101: 1.32-1.33x, 1.11-1.14x); fp32 1.13-1.14x at batch 1 (resnet101
1.16-1.18x), 1.02-1.04x at 2, level at 4 and 0.92-0.94x at 8, where the plan's Winograd 3x3 convs pay: fp32 takes
the graph below `FP32_PIXELS`.

PyTorch's route to the graph API is TorchScript (`torch.jit.trace`, `torch.jit.freeze`, deprecated but present),
and a graph made so is never freed, nor the folded weights it holds as constants (pytorch/pytorch#35600, #96726).
Measured with weakrefs: `torch.jit.freeze` keeps them even without the fuser, and the fuser keeps a traced graph's
constant tensors even without freezing; a private compilation unit does not help. Weights as module buffers are
freed, but the fuser then reorders them on every call (resnet50 fp32 at batch 1: 40.1 ms against the per-unit
plan's 36.7 and 32 ms as constants). Hence opt-in (`switches.cpu_onednn_graph`). Where this torch lacks
the route, tracing fails, or the compiled graph left a convolution outside oneDNN's partitions (the profiling
executor switched off by the user, ...), `build` returns None and the per-unit plan runs. The fuser is a
process-wide TorchScript setting: it is on only while a graph is made (under a lock), then restored; the graph
keeps its compiled partitions.
"""
from __future__ import annotations

import os
import threading
import warnings
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import structure

FP32_PIXELS = 100_000  # fp32 inputs of fewer pixels (N*H*W) run as a graph (batch 1 at 224x224: >= 1.1x)
WARMUP = 3  # calls that TorchScript's profiling executor takes to specialize the graph and hand it to the fuser

_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # held by another thread of the parent at the fork: never released in the child


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def supported() -> bool:
    """Whether this torch has the TorchScript fuser for oneDNN Graph."""
    return hasattr(torch.jit, "enable_onednn_fusion") and hasattr(torch.jit, "onednn_fusion_enabled")


def pays(x: Tensor) -> bool:
    """Whether the frozen forward of input `x` (in the convolutions' dtype) runs as a graph: bf16 always, fp32
    below `FP32_PIXELS` (see the module's docstring)."""
    return x.dtype == torch.bfloat16 or x.shape[0] * x.shape[2] * x.shape[3] < FP32_PIXELS


class _Features(nn.Module):
    """What is traced: `engine.cpu.run` from the input to the last block's output (cast to `out_dtype`), every
    unit a conv on its frozen fold with the bias, ReLU and residual add as separate ops, for the fuser to fuse."""

    def __init__(self, model: nn.Module, s, folds, out_dtype: Optional[torch.dtype]):
        super().__init__()
        self.s, self.out_dtype = s, out_dtype
        self.pool = structure.pool_key(model.maxpool)  # None: nn.Identity
        self.folds = {u.conv: folds[u.conv] for u in s.units}

    def conv(self, u, x: Tensor, relu: bool, residual: Optional[Tensor] = None) -> Tensor:
        f, c = self.folds[u.conv], u.conv
        y = F.conv2d(x, f.weight, f.bias, c.stride, c.padding, c.dilation, c.groups)
        if residual is not None:
            y = y + residual
        return F.relu(y) if relu else y

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(self.s.stem, x, True)
        if self.pool is not None:
            x = F.max_pool2d(x, *self.pool)
        for head, ds, tail in self.s.blocks:
            y = x
            for u in head:
                y = self.conv(u, y, True)
            x = self.conv(tail, y, True, x if ds is None else self.conv(ds, x, False))
        return x if self.out_dtype is None else x.to(self.out_dtype)


def _fused_convs(graph) -> int:
    """How many convolutions the optimized graph runs inside oneDNN Graph partitions."""
    return sum(len(n.g("Subgraph").findAllNodes("aten::_convolution", True))
               for n in graph.findAllNodes("prim::oneDNNFusionGroup", True))


def build(model: nn.Module, s, folds, x: Tensor, out_dtype: Optional[torch.dtype]) -> Optional[Callable]:
    """The frozen network's features (see `_Features`) as a compiled graph for inputs of x's shape, dtype and
    strides, or None where it cannot be made with every convolution in oneDNN's partitions."""
    if not supported():
        return None
    net = _Features(model, s, folds, out_dtype).eval()
    with _lock, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notices: this use is internal
        was = torch.jit.onednn_fusion_enabled()
        torch.jit.enable_onednn_fusion(True)
        try:
            graph = torch.jit.freeze(torch.jit.trace(net, x, check_trace=False))
            for _ in range(WARMUP):
                graph(x)
            fused = _fused_convs(torch.jit.last_executed_optimized_graph())
        except Exception:  # any failure to trace or compile leaves the per-unit plan in charge
            return None
        finally:
            torch.jit.enable_onednn_fusion(was)
    return graph if fused == len(s.units) else None
