"""Where a frozen CPU forward spends its time outside the convolutions: timestamps around every unit (engine.cpu._conv,
_tail), the max pool and the head (logits) inside the forward, medians over 20 forwards after 5, per segment:
entry (the call until the stem starts: the module's forward, the engine's checks), stem, max pool, units, the gaps
between units, the head (the cast for a bf16 model, pool and fc), and the return. At batch 1 the forward streams more
weight bytes than the L3 holds, so code and Python objects used once per forward come from memory on every forward;
each segment here is that cold cost.
Usage: python benchmarks/cpu_forward_segments.py ARCH BATCH cl|nchw fp32|bf16 [modules] [aten_finite] [no_fc_prefetch]
[default]   (2 threads, idle machine; `default`: the default mode, not frozen, whose head is always the modules';
`modules`: the head as the modules' path, HEAD_MAX_BATCH -1; `aten_finite`: the input check as ATen's
sum, the check before 2026-12-05's own pass (fp32 models: a bf16 model's check is `_C.bounded_bfloat16`'s); `no_fc_prefetch`: the last unit fetches nothing, PREFETCH_FC False)."""
import statistics
import sys
import time

import torch

import resnet_ext
from resnet_ext import ops
from resnet_ext.engine import cpu


def main() -> None:
    torch.set_num_threads(2)
    resnet_ext.cpu_replay(False)  # the units' Python wrappers timed here run only without the replay
    arch, batch, layout, dt = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    if "modules" in sys.argv[5:]:
        cpu.HEAD_MAX_BATCH = -1
    if "no_fc_prefetch" in sys.argv[5:]:
        cpu.PREFETCH_FC = False
    if "aten_finite" in sys.argv[5:]:
        cpu.frozen_input_ok = lambda x: (bool(torch.isfinite(x.sum(dtype=torch.float32)))
                                       or bool(torch.isfinite(x).all()))
    model = getattr(resnet_ext, arch)().eval()
    if "default" in sys.argv[5:]:
        model.to(torch.bfloat16 if dt == "bf16" else torch.float32)
    else:
        model = resnet_ext.freeze(model, dtype=torch.bfloat16 if dt == "bf16" else None)
    x = torch.randn(batch, 3, 224, 224)
    if layout == "cl":
        x = x.contiguous(memory_format=torch.channels_last)
    events, pc = [], time.perf_counter

    def timed(name, f):
        def g(*a):
            events.append((name, pc()))
            out = f(*a)
            events.append(("end", pc()))
            return out
        return g

    cpu._conv, cpu._tail = timed("unit", cpu._conv), timed("unit", cpu._tail)
    ops.max_pool = timed("maxpool", ops.max_pool)  # the flat forward calls it as ops.max_pool
    logits0 = cpu.logits

    def logits(*args, **kwargs):  # the head: from the last unit's end to the logits
        out = logits0(*args, **kwargs)
        events.append(("return", pc()))
        return out
    cpu.logits = logits
    seg = {}
    with torch.no_grad():
        for i in range(25):
            events.clear()
            t0 = pc()
            model(x)
            t1 = pc()
            if i < 5:
                continue
            unit_starts = [j for j, e in enumerate(events) if e[0] == "unit"]
            first, last = unit_starts[0], unit_starts[-1]
            pool = [j for j, e in enumerate(events) if e[0] == "maxpool"][0]
            ret = [j for j, e in enumerate(events) if e[0] == "return"][0]
            d = {"entry": events[first][1] - t0, "stem": events[first + 1][1] - events[first][1],
                 "max pool": events[pool + 1][1] - events[pool][1],
                 "units": sum(events[j + 1][1] - events[j][1] for j in unit_starts[1:]),
                 "gaps": sum(events[j][1] - events[j - 1][1] for j in unit_starts[2:]),
                 "head": events[ret][1] - events[last + 1][1], "return": t1 - events[ret][1], "forward": t1 - t0}
            for k, v in d.items():
                seg.setdefault(k, []).append(v)
    print(f"torch {torch.__version__}, {arch} {'default' if 'default' in sys.argv[5:] else 'frozen'} {dt}, "
          f"batch {batch}, {layout}"
          + (", head as modules" if cpu.HEAD_MAX_BATCH < 0 else "")
          + (", ATen's finiteness check" if "aten_finite" in sys.argv[5:] else "")
          + (", no fc prefetch" if not cpu.PREFETCH_FC else "") + ": "
          + " ".join(f"{k} {1e3 * statistics.median(v):.3f}" for k, v in seg.items()) + " ms")


if __name__ == "__main__":
    main()
