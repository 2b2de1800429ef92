"""Whole frozen bf16 forwards at batch 1 on an input of SIZE x SIZE, two plans of one model: "A" with conv_direct on
stride-2 convs only (DIRECT_STRIDES (2,)), "B" on stride 1 too (the kxk convs Winograd leaves to oneDNN: few tiles on
small maps); path counts and the logits' largest difference first, then 30 rounds alternating which goes first, each
the mean of 5 forwards after an untimed one; medians and the per-round B/A ratios.
Usage: python benchmarks/cpu_direct_small_ab.py ARCH SIZE   (2 threads; idle machine)."""
import copy
import statistics
import sys
import time

import torch
import torchvision

import resnet_ext
from resnet_ext.engine import cpu


def main() -> None:
    torch.set_num_threads(2)
    arch, size = sys.argv[1], int(sys.argv[2])
    base = resnet_ext.from_torchvision(getattr(torchvision.models, arch)().eval()).eval()
    base = base.to(memory_format=torch.channels_last)
    resnet_ext.freeze(base, dtype=torch.bfloat16)
    x = torch.randn(1, 3, size, size).contiguous(memory_format=torch.channels_last)
    models = {"A": copy.deepcopy(base), "B": copy.deepcopy(base)}
    strides = {"A": (2,), "B": (1, 2)}
    saved = cpu.DIRECT_STRIDES
    with torch.no_grad():
        out = {}
        for k, m in models.items():
            cpu.DIRECT_STRIDES = strides[k]  # read when the plan is made, on the first call
            try:
                resnet_ext.reset_path_counts()
                out[k] = m(x)
                print(k, resnet_ext.path_counts())
            finally:
                cpu.DIRECT_STRIDES = saved
        print("logits |A-B|/max", float((out["A"] - out["B"]).abs().max() / out["A"].abs().max()))
        t = {"A": [], "B": []}
        for r in range(30):
            for k in ("AB" if r % 2 == 0 else "BA"):
                models[k](x)
                t0 = time.perf_counter()
                for _ in range(5):
                    models[k](x)
                t[k].append((time.perf_counter() - t0) / 5)
    ratios = sorted(b / a for a, b in zip(t["A"], t["B"]))
    print(f"{arch} {size}: A {1e3 * statistics.median(t['A']):.3f} ms B {1e3 * statistics.median(t['B']):.3f} ms, "
          f"per-round B/A median {statistics.median(ratios):.3f} ({ratios[0]:.3f}-{ratios[-1]:.3f})")


if __name__ == "__main__":
    main()
