"""The frozen CPU forward's programs (`switches.cpu_replay`): once an input's plan is settled, one forward's operator
calls are recorded (`record`) and kept as a `_C.CpuProgram`, which later forwards of that input run from C++ instead
of the Python that chose the calls. At batch 1 that Python runs cold (the weights streamed through the caches evict
it) while the second core waits: resnet50 bf16 at 224x224 on a 2-core Zen 5 spent ~7% of its forward there.

A program replays only what was recorded and verified: every call an operator of `NAMESPACES` with one tensor output
or none, every tensor argument the input, an earlier call's output, or a tensor the plan itself holds (its folded,
packed or transformed weights: `constants`); anything else (a tensor made outside the dispatcher, a list of
tensors) and no program is made. The recording is replayed once on the same input and kept only if it gives the
same bits. What it does not replay is checked by the caller on every forward as before (engine/cpu.py,
forward_frozen: the structure, the folds, the input's key and finiteness); the head (pool and fc, read live) stays
in Python.
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional, Tuple

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode

from .._C_loader import _C

NAMESPACES = ("aten", "resnet_ext", "mkldnn")


class _Recorder(TorchDispatchMode):
    """The operator calls of one forward, in order: (OpOverload, args, kwargs, output)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.calls.append((func, args, kwargs, out))
        return out


def replayable() -> bool:
    """Whether a forward may run or record a program now: no TorchDispatchMode or TorchFunctionMode active (a
    replay would hide the Python-level calls from the latter) and nothing being compiled."""
    return (_get_current_dispatch_mode() is None and not torch._C._is_torch_function_mode_enabled()
            and not torch.compiler.is_compiling())


def record(fn: Callable[[Tensor], Tensor], x: Tensor, constants: Iterable[Tensor]) -> Tuple[Optional[object], Tensor]:
    """fn(x) with its operator calls recorded: (the verified program, or None where it cannot be one; fn's output)."""
    rec = _Recorder()
    with rec:
        out = fn(x)
    try:
        program = _program(rec.calls, x, out, {id(t) for t in constants})
    except (RuntimeError, TypeError):  # a call CpuProgram cannot take: the plan keeps running as it is
        program = None
    if program is not None and not torch.equal(program.run(x), out):
        program = None
    return program, out


def _program(calls, x: Tensor, out: Tensor, constants: set) -> Optional[object]:
    program = _C.CpuProgram()
    slots = {id(x): 0}  # the recorded tensors stay alive in `calls` until this returns: their ids are not reused
    for func, args, kwargs, result in calls:
        if func.namespace not in NAMESPACES:
            return None
        params = func._schema.arguments
        if len(args) > len(params) or not set(kwargs) <= {p.name for p in params[len(args):]}:
            return None
        values = list(args)
        for p in params[len(args):]:
            if p.name in kwargs:
                values.append(kwargs[p.name])
            elif p.has_default_value():
                values.append(p.default_value)
            else:
                return None
        arg_slots = []
        for v in values:
            if isinstance(v, Tensor):
                if id(v) in slots:
                    arg_slots.append(slots[id(v)])
                elif id(v) in constants:
                    arg_slots.append(-1)
                else:
                    return None  # made outside the recorded calls and not the plan's: it may depend on the input
            elif isinstance(v, (list, tuple)) and any(isinstance(t, Tensor) for t in v):
                return None
            else:
                arg_slots.append(-1)
        if result is not None and not isinstance(result, Tensor):
            return None
        # No output, or an in-place op's (its argument itself): the slot it already has; else a new slot.
        out_slot = -1 if result is None or id(result) in slots else len(slots)
        if out_slot >= 0:
            slots[id(result)] = out_slot
        program.add(func._schema.name, func._schema.overload_name, values, arg_slots, out_slot)
    if id(out) not in slots:
        return None
    program.finish(slots[id(out)])
    return program
