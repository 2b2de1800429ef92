"""Does a runtime's time depend on who ran just before it? torchvision, resnet_ext's frozen fp32 and bf16 models,
ONNX Runtime and OpenVINO (fp32 and bf16; `bench --runtimes`' peers), 2 threads, channels_last input, in rotated
interleaved rounds (`time_interleaved`), three ways: one timed call per contender per round (bench before
2026-12-05), a 0.1 s pause before each timed call (every pool's spinning threads gone to sleep), and an untimed call
of the same contender right before each timed one (`settle=1`, bench's CPU eval since then). Each scheme twice;
median ms per contender, and our frozen models' time over the fastest fp32 peer's and OpenVINO bf16's per round
(time ratios: below 1, ours is the faster).
Usage: python benchmarks/interleave_settle.py [ARCH] [BATCH] [ROUNDS]"""
import copy
import statistics
import sys
import time

import torch
import torchvision

import resnet_ext
from resnet_ext import bench
from resnet_ext.cli import time_interleaved


def main() -> None:
    torch.set_num_threads(2)
    arch = sys.argv[1] if len(sys.argv) > 1 else "resnet50"
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    tv = getattr(torchvision.models, arch)().eval()
    ours = resnet_ext.from_torchvision(copy.deepcopy(tv))
    x = torch.randn(batch, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    peers, _, versions = bench.runtime_peers(copy.deepcopy(tv), x, True)
    fns = {"torchvision": tv, "frozen": resnet_ext.freeze(copy.deepcopy(ours)),
           "frozen bf16": resnet_ext.freeze(copy.deepcopy(ours), dtype=torch.bfloat16), **peers}
    print(f"torch {torch.__version__}, {versions}, {arch} batch {batch}, {rounds} rounds; median ms")
    fp32_peers = [n for n in peers if "bf16" not in n]
    with torch.inference_mode():
        for scheme in ("one call", "pause", "settle", "one call", "pause", "settle"):
            if scheme == "pause":
                t = {n: [] for n in fns}
                names = list(fns)
                for r in range(rounds):  # time_interleaved's order, the pause before each timed call
                    k = r % len(names)
                    for n in names[k:] + names[:k]:
                        time.sleep(0.1)
                        t0 = time.perf_counter()
                        fns[n](x)
                        t[n].append(time.perf_counter() - t0)
            else:
                t, _ = time_interleaved(fns, x, rounds, {n: 2 for n in fns}, settle=int(scheme == "settle"))
            fastest = [min(t[n][i] for n in fp32_peers) for i in range(rounds)]
            vs = [a / b for a, b in zip(t["frozen"], fastest)]
            vs16 = [a / b for a, b in zip(t["frozen bf16"], t["openvino bf16"])]
            print(f"{scheme:8s} " + " ".join(f"{n} {statistics.median(v) * 1e3:.1f}" for n, v in t.items())
                  + f" | time frozen / fastest fp32 peer {statistics.median(vs):.3f} ({min(vs):.2f}-{max(vs):.2f})"
                  + f", time frozen bf16 / OpenVINO bf16 {statistics.median(vs16):.3f} "
                    f"({min(vs16):.2f}-{max(vs16):.2f})",
                  flush=True)


if __name__ == "__main__":
    main()
