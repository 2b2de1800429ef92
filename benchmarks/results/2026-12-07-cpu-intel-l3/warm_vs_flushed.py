"""Per kind of unit, its time inside a frozen forward at batch 1 (channels_last, 224x224, 2 threads): back-to-back
forwards ("warm") against forwards after 600 MB were written ("flushed": weights and activations out of L3), the
two alternating in one process; per-round medians. PREFETCH=0: with cpu_prefetch(False).
Usage: python warm_vs_flushed.py ARCH fp32|bf16 [ROUNDS]"""
import collections, statistics, sys, time, torch, resnet_ext
from resnet_ext.engine import cpu
torch.set_num_threads(2)
resnet_ext.cpu_replay(False)
import os; resnet_ext.cpu_prefetch(os.environ.get("PREFETCH", "1") == "1")
arch, dt = sys.argv[1], sys.argv[2]
m = resnet_ext.freeze(getattr(resnet_ext, arch)().eval(), dtype=torch.bfloat16 if dt == "bf16" else None)
x = torch.randn(1, 3, 224, 224).contiguous(memory_format=torch.channels_last)
calls = []
conv0, tail0 = cpu._conv, cpu._tail
def conv(u, y, wb):
    t0 = time.perf_counter(); out = conv0(u, y, wb); calls.append((u, y, wb, time.perf_counter() - t0)); return out
def tail(u, y, r, wb):
    t0 = time.perf_counter(); out = tail0(u, y, r, wb); calls.append((u, y, wb, time.perf_counter() - t0)); return out
cpu._conv, cpu._tail = conv, tail
junk = torch.empty(150 << 20)
per = {k: collections.defaultdict(list) for k in ("warm", "flushed")}
fwd = {k: [] for k in per}
nbytes = {}
with torch.no_grad():
    m(x); m(x)
    for r in range(int(sys.argv[3]) if len(sys.argv) > 3 else 16):
        for k in (("warm", "flushed") if r % 2 else ("flushed", "warm")):
            m(x)
            if k == "flushed": junk.fill_(1.0)
            calls.clear(); t0 = time.perf_counter(); m(x); fwd[k].append(time.perf_counter() - t0)
            g = collections.defaultdict(float)
            for u, y, wb, t in calls:
                key = (wb[0] if isinstance(wb[0], str) else "oneDNN", u.conv.kernel_size[0], u.conv.stride[0],
                       y.shape[2])
                g[key] += t
                w = wb[1] if isinstance(wb[0], str) else wb[0]
                try: nbytes[id(w)] = w.numel() * w.element_size()
                except Exception: nbytes[id(w)] = 0
            for key, t in g.items(): per[k][key].append(t)
print(f"weights (own packed + oneDNN) ~{sum(nbytes.values()) / 2**20:.0f} MiB")
print(" ".join(f"{k} fwd {statistics.median(v) * 1e3:.2f} ms" for k, v in fwd.items()))
for key in sorted(per["warm"], key=lambda q: -statistics.median(per["warm"][q])):
    a, b = per["warm"][key], per["flushed"][key]
    print(f"  {str(key):32s} warm {statistics.median(a) * 1e3:6.2f}  flushed {statistics.median(b) * 1e3:6.2f} ms")
