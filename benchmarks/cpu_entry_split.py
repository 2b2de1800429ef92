"""The frozen CPU forward's entry (the call until the stem's unit starts) split by timestamps around the calls it
makes: engine.enabled, engine.forward, cpu.reused_memory, engine.frozen_folds, cpu.forward_frozen, structure.of, the
input check (cpu.frozen_input_ok; for a bf16 model _C.bounded_bfloat16, the check and cast), cpu.internal_layout,
cpu.run and the first unit (cpu._conv). Each line: the median time since the previous mark over 25 forwards after 5 (a
mark's own cost, ~1-3 us, included). At batch 1 the forward streams more weight than the L3 holds, so what the
entry reads comes from memory on every forward: these are the cold costs.
Usage: python benchmarks/cpu_entry_split.py ARCH BATCH cl|nchw fp32|bf16   (2 threads; idle machine)."""
import statistics
import sys
import time

import torch

import resnet_ext
from resnet_ext import engine
from resnet_ext._C_loader import _C
from resnet_ext.engine import cpu, structure

MARKS = ["enabled", "enabled.end", "forward", "reuse", "reuse.end", "frozen_folds", "frozen_folds.end",
         "forward_frozen", "structure", "structure.end", "finite", "finite.end", "layout", "layout.end", "run", "unit"]


def main() -> None:
    torch.set_num_threads(2)
    resnet_ext.cpu_replay(False)  # the units' Python wrappers timed here run only without the replay
    arch, batch, layout, dt = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    model = resnet_ext.freeze(getattr(resnet_ext, arch)().eval(), dtype=torch.bfloat16 if dt == "bf16" else None)
    x = torch.randn(batch, 3, 224, 224)
    if layout == "cl":
        x = x.contiguous(memory_format=torch.channels_last)
    events, pc = [], time.perf_counter

    def mark(name, mod, attr, end=False):
        f = getattr(mod, attr)

        def g(*a, **k):
            events.append((name, pc()))
            out = f(*a, **k)
            if end:
                events.append((name + ".end", pc()))
            return out
        setattr(mod, attr, g)

    mark("enabled", engine, "enabled", True)
    mark("forward", engine, "forward")
    mark("reuse", cpu, "reused_memory", True)
    mark("frozen_folds", engine, "frozen_folds", True)
    mark("forward_frozen", cpu, "forward_frozen")
    mark("structure", structure, "of", True)
    mark("finite", cpu, "frozen_input_ok", True)
    mark("finite", _C, "bounded_bfloat16", True)
    mark("layout", cpu, "internal_layout", True)
    mark("run", cpu, "run")
    mark("unit", cpu, "_conv")
    res = {}
    with torch.no_grad():
        for i in range(30):
            events.clear()
            t0 = pc()
            model(x)
            if i < 5:
                continue
            first = {}
            for n, t in events:
                first.setdefault(n, t)
            prev = t0
            for n in MARKS:
                if n in first:
                    res.setdefault(n, []).append(first[n] - prev)
                    prev = first[n]
            res.setdefault("entry", []).append(first["unit"] - t0)
    print(f"torch {torch.__version__}, {arch} frozen {dt}, batch {batch}, {layout}: us since the previous mark")
    print("  " + ", ".join(f"{k} {1e6 * statistics.median(v):.1f}" for k, v in res.items()))


if __name__ == "__main__":
    main()
