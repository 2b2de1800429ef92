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


def main() -> None:
    torch.set_num_threads(2)
    resnet_ext.cpu_replay(False)  # the units' Python wrappers timed here run only without the replay
    resnet_ext.cpu_prefetch(os.environ.get("PREFETCH", "1") == "1")
    touch = os.environ.get("TOUCH") == "1"
    arch, batch, dt = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    model = resnet_ext.freeze(getattr(resnet_ext, arch)().eval(),
                              dtype=torch.bfloat16 if dt == "bf16" else None)
    x = torch.randn(batch, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    calls, recording = [], [False]
    conv0, tail0 = cpu._conv, cpu._tail

    def conv(u, y, wb):
        if touch and isinstance(wb[0], str):
            wb[1].sum(), y.sum()
        t0 = time.perf_counter()
        out = conv0(u, y, wb)
        if recording[0]:
            calls.append((u, y, wb, None, time.perf_counter() - t0))
        return out

    def tail(u, y, r, wb):
        if touch and isinstance(wb[0], str):
            wb[1].sum(), y.sum(), r.sum()
        saved = r.clone() if recording[0] else None  # a oneDNN tail writes into r
        t0 = time.perf_counter()
        out = tail0(u, y, r, wb)
        if recording[0]:
            calls.append((u, y, wb, saved, time.perf_counter() - t0))
        return out

    cpu._conv, cpu._tail = conv, tail
    with torch.no_grad():
        for _ in range(3):
            model(x)
        fwd = []
        for _ in range(5):
            t0 = time.perf_counter()
            model(x)
            fwd.append(time.perf_counter() - t0)
        runs = []
        for _ in range(5):
            calls.clear()
            recording[0] = True
            model(x)
            recording[0] = False
            runs.append([c[4] for c in calls])
        inside = [statistics.median(r[i] for r in runs) for i in range(len(calls))]
        hot = []
        for u, y, wb, saved, _ in calls:
            times = []
            for _ in range(6):
                r = None if saved is None else saved.clone()
                t0 = time.perf_counter()
                conv0(u, y, wb) if saved is None else tail0(u, y, r, wb)
                times.append(time.perf_counter() - t0)
            hot.append(min(times[1:]))
    groups = collections.defaultdict(lambda: [0.0, 0.0, 0])
    for (u, y, wb, _, _), t, h in zip(calls, inside, hot):
        key = (wb[0] if isinstance(wb[0], str) else "oneDNN", tuple(u.conv.kernel_size), u.conv.stride[0], y.shape[2])
        g = groups[key]
        g[0], g[1], g[2] = g[0] + t, g[1] + h, g[2] + 1
    print(f"{arch} b{batch} {dt}: forward median {statistics.median(fwd) * 1e3:.2f} ms; units in-forward "
          f"{sum(inside) * 1e3:.2f} ms, hot {sum(hot) * 1e3:.2f} ms")
    for key, (t, h, n) in sorted(groups.items(), key=lambda kv: -kv[1][0]):
        print(f"  {str(key):45s} n={n:2d} in-forward {t * 1e3:6.2f} ms  hot {h * 1e3:6.2f} ms  diff "
              f"{(t - h) * 1e3:5.2f}")


if __name__ == "__main__":
    main()
