"""The frozen CPU forward's fixed-cost pieces alone, for comparing code versions (run this file against each
version's build): `_C.all_bounded` (`_C.all_finite` before 2026-12-07) on a 1x3x224x224 and an 8x3x224x224 fp32
input in cache; the max pool (`ops.max_pool`) on the resnet50 stem's 1x64x112x112 channels_last map against ATen's max_pool2d in the same process
(5 rounds of 50 calls, each contender's median per round); the frozen resnet50's per-forward structure check
(`Structure.matches`) in a loop (warm) and right after a 200 MB write (cold). Medians in us.
Usage: python benchmarks/cpu_entry_alone.py   (2 threads; idle machine)."""
import statistics
import time

import torch
import torch.nn.functional as F

import resnet_ext
from resnet_ext import ops
from resnet_ext._C_loader import _C
from resnet_ext.engine import state


def median_us(f, calls=50):
    ts = []
    for _ in range(calls):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return 1e6 * statistics.median(ts)


def main() -> None:
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}")
    for n in (1, 8):
        x = torch.randn(n, 3, 224, 224)
        print(f"all_bounded {n}x3x224x224 fp32: {median_us(lambda: _C.all_bounded(x, 64)):.1f} us")
    pool = torch.nn.MaxPool2d(3, 2, 1)
    for dt in (torch.bfloat16, torch.float32):
        m = torch.randn(1, 64, 112, 112).to(dt).contiguous(memory_format=torch.channels_last).relu()
        rounds = [(median_us(lambda: ops.max_pool(pool, m)), median_us(lambda: F.max_pool2d(m, 3, 2, 1)))
                  for _ in range(5)]
        print(f"max pool 1x64x112x112 {dt}: ours {[round(a) for a, _ in rounds]} us, ATen {[round(b) for _, b in rounds]}"
              f" us, ours/ATen {[round(a / b, 2) for a, b in rounds]}")
    model = resnet_ext.freeze(resnet_ext.resnet50().eval())
    with torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    s = state.of(model).structure
    assert s.matches(model)
    big = torch.empty(200 << 20, dtype=torch.uint8)
    cold = []
    for _ in range(15):
        big.fill_(1)
        t = time.perf_counter()
        s.matches(model)
        cold.append(time.perf_counter() - t)
    print(f"Structure.matches resnet50: warm {median_us(lambda: s.matches(model), 200):.1f} us, "
          f"cold {1e6 * statistics.median(cold):.1f} us")


if __name__ == "__main__":
    main()
