"""The frozen mode with one CPU switch off at a time, interleaved rounds; time all on / time with it off.
Usage: python switches_ab.py ARCH BATCH ROUNDS bf16|fp32 (run as two per-dtype copies of this script, merged after)."""
import sys, time, statistics, torch, resnet_ext
torch.set_num_threads(2)
arch, n = sys.argv[1], int(sys.argv[2]); rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 8
dt = sys.argv[4] if len(sys.argv) > 4 else "bf16"
if dt == "bf16":
    names = ["cpu_winograd", "cpu_conv1x1", "cpu_stem", "cpu_direct"]
    configs = {"bf16 all on": {}, "bf16 conv1x1 off": {"cpu_conv1x1": False},
               "bf16 winograd off": {"cpu_winograd": False}, "bf16 direct off": {"cpu_direct": False},
               "bf16 stem off": {"cpu_stem": False}, "bf16 all off": {k: False for k in names}, "fp32 all on": {}}
else:
    names = ["cpu_winograd", "cpu_conv1x1", "cpu_stem", "cpu_direct", "cpu_prefetch"]
    configs = {"fp32 all on": {}, "fp32 conv1x1 off": {"cpu_conv1x1": False},
               "fp32 winograd off": {"cpu_winograd": False}, "fp32 prefetch off": {"cpu_prefetch": False},
               "fp32 all off": {k: False for k in names}}


def setall(**kw):
    for k in names:
        getattr(resnet_ext, k)(kw.get(k, True))


base = getattr(resnet_ext, arch)().eval()
m16 = resnet_ext.freeze(__import__("copy").deepcopy(base), dtype=torch.bfloat16)
m32 = resnet_ext.freeze(__import__("copy").deepcopy(base))
x = torch.randn(n, 3, 224, 224).contiguous(memory_format=torch.channels_last)
calls = 5 if n == 1 else 2
times = {k: [] for k in configs}
with torch.inference_mode():
    for r in range(rounds):
        ks = list(configs); ks = ks[r % len(ks):] + ks[:r % len(ks)]
        for k in ks:
            setall(**configs[k]); m = m32 if k.startswith("fp32") else m16
            m(x); m(x)
            t = time.perf_counter()
            for _ in range(calls): m(x)
            times[k].append((time.perf_counter() - t) / calls * 1e3)
setall()
ref = statistics.median(times[f"{dt} all on"])
for k, v in times.items():
    print(f"{arch} b{n} {k:18s} median {statistics.median(v):7.2f} ms  (min {min(v):7.2f})  all-on/this {ref/statistics.median(v):.3f}")
