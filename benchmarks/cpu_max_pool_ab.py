"""CPU A/B of resnet_ext's NHWC max pool kernel (resnet_ext::max_pool_nhwc) against ATen's, interleaved in one
process: the stem's pool alone, then whole forwards (frozen fp32, frozen bf16, default) with `ops.max_pool` sent to
the module (ATen's pool, as before the kernel) or left as it is. Prints per contender the median over rounds, and
the ratio per round (ATen / ours) with its spread.

    python benchmarks/cpu_max_pool_ab.py [--rounds 15] [--batch 1 8] [--threads 2]
"""
import argparse
import statistics

import torch
import torch.nn.functional as F

import resnet_ext
from resnet_ext import ops
from resnet_ext.cli import time_interleaved


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15, help="rounds of the whole models (the pool alone: 20x as many)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    ours_pool = ops.max_pool

    def stock_pool(pool, x):
        return pool(x)

    def with_pool(m, pool):
        def run(img):
            ops.max_pool = pool
            try:
                with torch.no_grad():
                    return m(img)
            finally:
                ops.max_pool = ours_pool
        return run

    print(f"torch {torch.__version__}, {a.threads} threads; times in ms (medians over rounds), ratio ATen/ours per "
          "round: median (range)")
    for n in a.batch:
        comparisons = []
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(n, 64, 112, 112).to(dtype).contiguous(memory_format=torch.channels_last)
            comparisons.append((f"stem pool b{n} {str(dtype)[6:]}", x, 20 * a.rounds, {
                "ATen": lambda x: F.max_pool2d(x, 3, 2, 1),
                "ours": lambda x: torch.ops.resnet_ext.max_pool_nhwc(x, [3, 3], [2, 2], [1, 1], [1, 1])}))
        img = torch.randn(n, 3, 224, 224)
        for name, m in (("frozen fp32", resnet_ext.freeze(resnet_ext.resnet50().eval())),
                        ("frozen bf16", resnet_ext.freeze(resnet_ext.resnet50().eval(), dtype=torch.bfloat16)),
                        ("default fp32", resnet_ext.resnet50().eval())):
            comparisons.append((f"resnet50 {name} b{n}", img, a.rounds,
                                {"ATen": with_pool(m, stock_pool), "ours": with_pool(m, ours_pool)}))
        for name, x, rounds, fns in comparisons:
            times, _ = time_interleaved(fns, x, rounds, {k: 3 for k in fns})
            ratios = sorted(s / o for s, o in zip(times["ATen"], times["ours"]))
            print(f"{name:28s} ATen {statistics.median(times['ATen']) * 1e3:8.3f}  ours "
                  f"{statistics.median(times['ours']) * 1e3:8.3f}  ratio {statistics.median(ratios):.2f} "
                  f"({ratios[0]:.2f}-{ratios[-1]:.2f})")


if __name__ == "__main__":
    main()
