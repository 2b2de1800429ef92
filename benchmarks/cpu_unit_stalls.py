"""Where a frozen CPU forward waits on memory: each unit's time inside the forward (engine.cpu._conv and _tail wrapped
with a timer; medians of 5 forwards) against the same call replayed right after itself ("hot": its weight and input
in cache; the best of 5 replays after one), summed per kind of unit (path, kernel, stride, input size).
Usage: python benchmarks/cpu_unit_stalls.py ARCH BATCH fp32|bf16   (channels_last input, 224x224, 2 threads, idle
machine; TOUCH=1 reads each own-op unit's weight and inputs just before its timer starts; PREFETCH=0: with
cpu_prefetch(False))."""
import collections
import os
import statistics
import sys
import time

import torch

import resnet_ext
from resnet_ext.engine import cpu

torch.set_num_threads(2)
resnet_ext.cpu_prefetch(os.environ.get("PREFETCH", "1") == "1")
arch, b, dt = sys.argv[1], int(sys.argv[2]), sys.argv[3]
dtype = torch.bfloat16 if dt == "bf16" else torch.float32
m = getattr(resnet_ext, arch)().eval()
f = resnet_ext.freeze(m, dtype=dtype) if dtype != torch.float32 else resnet_ext.freeze(m)
x = torch.randn(b, 3, 224, 224).contiguous(memory_format=torch.channels_last)
calls = []
TOUCH = os.environ.get("TOUCH") == "1"
rec = [False]
o_conv, o_tail = cpu._conv, cpu._tail
def conv(u, y, wb):
    if TOUCH and isinstance(wb[0], str):
        wb[1].sum(), y.sum()
    t0 = time.perf_counter(); out = o_conv(u, y, wb); t = time.perf_counter() - t0
    if rec[0]: calls.append(("c", u, y, wb, None, t))
    return out
def tail(u, y, r, wb):
    if TOUCH and isinstance(wb[0], str):
        wb[1].sum(), y.sum(), r.sum()
    rr = r.clone() if rec[0] else None
    t0 = time.perf_counter(); out = o_tail(u, y, r, wb); t = time.perf_counter() - t0
    if rec[0]: calls.append(("t", u, y, wb, rr, t))
    return out
cpu._conv, cpu._tail = conv, tail
with torch.no_grad():
    for _ in range(3): f(x)
    fwd = []
    for _ in range(5):
        t0 = time.perf_counter(); f(x); fwd.append(time.perf_counter() - t0)
    runs = []
    for _ in range(5):
        calls.clear(); rec[0] = True; f(x); rec[0] = False
        runs.append([c[5] for c in calls])
    per_unit = [statistics.median(r[i] for r in runs) for i in range(len(calls))]
    hot = []
    for kind, u, y, wb, rr, _ in calls:
        ts = []
        for _ in range(6):
            r2 = rr.clone() if rr is not None else None
            t0 = time.perf_counter()
            (o_conv(u, y, wb) if kind == "c" else o_tail(u, y, r2, wb))
            ts.append(time.perf_counter() - t0)
        hot.append(min(ts[1:]))
groups = collections.defaultdict(lambda: [0.0, 0.0, 0])
for (kind, u, y, wb, rr, _), t, h in zip(calls, per_unit, hot):
    k = wb[0] if isinstance(wb[0], str) else "oneDNN"
    key = (k, tuple(u.conv.kernel_size), u.conv.stride[0], y.shape[2])
    g = groups[key]; g[0] += t; g[1] += h; g[2] += 1
print(f"{arch} b{b} {dt}: forward median {statistics.median(fwd)*1e3:.2f} ms; units in-forward {sum(per_unit)*1e3:.2f} ms, hot {sum(hot)*1e3:.2f} ms")
for key, (t, h, n) in sorted(groups.items(), key=lambda kv: -kv[1][0]):
    print(f"  {str(key):45s} n={n:2d} in-forward {t*1e3:6.2f} ms  hot {h*1e3:6.2f} ms  diff {(t-h)*1e3:5.2f}")
