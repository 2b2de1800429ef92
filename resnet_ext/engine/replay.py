"""The frozen CPU forward's programs (`switches.cpu_replay`): once an input's plan is settled, one forward's operator
calls are recorded (`record`) and kept as a `_C.CpuProgram`, which later forwards of that input run from C++ instead
of the Python that chose the calls. At batch 1 that Python runs cold (the weights streamed through the caches evict
it) while the second core waits: resnet50 bf16 at 224x224 on a 2-core Zen 5 spent ~5% of its forward there (~7%
with the dispatcher, which a replay still runs).

A program replays only what was recorded and verified: every call an operator of `NAMESPACES` with one tensor output
or none, every tensor argument the input, an earlier call's output, or a tensor the plan itself holds (its folded,
packed or transformed weights: `constants`); anything else (a tensor made outside the dispatcher, a list of
tensors) and no program is made. The recording is replayed once on the same input and kept only if it gives the
same bits. What it does not replay is checked by the caller on every forward as before (engine/cpu.py,
forward_frozen: the structure, the folds, the input's key and finiteness); the head (pool and fc, read live) stays
in Python.
"""
from __future__ import annotations

import weakref
from typing import Callable, Iterable, Optional, Tuple

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode

from .._C_loader import _C

NAMESPACES = ("aten", "resnet_ext", "mkldnn")


class _Recorder(TorchDispatchMode):
    """Builds the program as the forward's operator calls come, holding none of their tensors: a tensor's slot is
    forgotten when it is freed (a weakref callback), so a later tensor at its address is never taken for it."""

    def __init__(self, x: Tensor, constants: set):
        super().__init__()
        self.program, self.constants, self.failed = _C.CpuProgram(), constants, False
        self.slots, self.next, self.finalizers = {}, 0, []
        self._slot(x)

    def _slot(self, t: Tensor) -> None:
        key, slots = id(t), self.slots
        slots[key] = self.next
        self.next += 1
        self.finalizers.append(weakref.finalize(t, slots.pop, key, None))

    def done(self) -> None:
        """Drops the callbacks: each stays registered while its tensor lives (the caller's input, a kept output),
        one more per recording, for as long as the caller keeps that tensor."""
        for f in self.finalizers:
            f.detach()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not self.failed:
            try:
                self.failed = not self._add(func, args, kwargs, out)
            except Exception:  # a call CpuProgram cannot take (an argument it cannot convert): no program
                self.failed = True
        return out

    def _add(self, func, args, kwargs, out) -> bool:
        if func.namespace not in NAMESPACES:
            return False
        params = func._schema.arguments
        if len(args) > len(params) or not set(kwargs) <= {p.name for p in params[len(args):]}:
            return False
        values = list(args)
        for p in params[len(args):]:
            if p.name in kwargs:
                values.append(kwargs[p.name])
            elif p.has_default_value():
                values.append(p.default_value)
            else:
                return False
        arg_slots = []
        for v in values:
            if isinstance(v, Tensor):
                if id(v) in self.slots:
                    arg_slots.append(self.slots[id(v)])
                elif id(v) in self.constants:
                    arg_slots.append(-1)
                else:
                    return False  # made outside the recorded calls and not the plan's: it may depend on the input
            elif isinstance(v, (list, tuple)) and any(isinstance(t, Tensor) for t in v):
                return False
            else:
                arg_slots.append(-1)
        if out is not None and type(out) is not Tensor:
            return False
        # No output, or an in-place op's (its argument itself): the slot it already has; else a new slot.
        slot = -1 if out is None or id(out) in self.slots else self.next
        self.program.add(func._schema.name, func._schema.overload_name, values, arg_slots, slot)
        if slot >= 0:
            self._slot(out)
        return True


def replayable(x: Tensor) -> bool:
    """Whether a forward of x may run or record a program now: x a plain tensor (a subclass's __torch_function__
    would see the plan's calls, not a replay's), no TorchDispatchMode or TorchFunctionMode active, nothing being
    compiled."""
    return (type(x) is Tensor and _get_current_dispatch_mode() is None
            and not torch._C._is_torch_function_mode_enabled() and not torch.compiler.is_compiling())


def record(fn: Callable[[Tensor], Tensor], x: Tensor, constants: Iterable[Tensor]) -> Tuple[Optional[object], Tensor]:
    """fn(x) with its operator calls recorded: (the verified program, or None where it cannot be one; fn's output).
    Whatever goes wrong in making or verifying the program leaves None (the plan keeps running as it is)."""
    rec = _Recorder(x, {id(t) for t in constants})
    with rec:
        out = fn(x)
    program = None
    try:
        if not rec.failed and id(out) in rec.slots:
            rec.program.finish(rec.slots[id(out)])
            if torch.equal(rec.program.run(x), out):
                program = rec.program
    except Exception:
        program = None
    finally:
        rec.done()
    return program, out
