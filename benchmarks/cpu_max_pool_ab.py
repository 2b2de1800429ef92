"""CPU A/B of resnet_ext's NHWC max pool kernel (resnet_ext::max_pool_nhwc) against ATen's, interleaved in one
process: the stem's pool alone, then whole forwards (frozen fp32, frozen bf16, default) with `ops.max_pool` sent to
the module (ATen's pool, as before the kernel) or left as it is. Prints per contender the median over rounds, and
the ratio per round (ATen / ours) with its spread.

    python benchmarks/cpu_max_pool_ab.py [--rounds 7] [--batch 1 8] [--threads 2]
"""
import argparse
import statistics

import torch
import torch.nn.functional as F
from torch.utils import benchmark

import resnet_ext
from resnet_ext import ops


def timed(fn, min_run_time):
    return benchmark.Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads()).blocked_autorange(
        min_run_time=min_run_time).median


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    ours_pool = ops.max_pool

    def stock_pool(pool, x):
        return pool(x)

    contenders = {}
    for n in a.batch:
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(n, 64, 112, 112).to(dtype).contiguous(memory_format=torch.channels_last)
            contenders[f"stem pool b{n} {str(dtype)[6:]}"] = (
                lambda x=x: F.max_pool2d(x, 3, 2, 1),
                lambda x=x: torch.ops.resnet_ext.max_pool_nhwc(x, [3, 3], [2, 2], [1, 1], [1, 1]))
        img = torch.randn(n, 3, 224, 224)
        frozen = resnet_ext.freeze(resnet_ext.resnet50().eval())
        frozen_bf16 = resnet_ext.freeze(resnet_ext.resnet50().eval(), dtype=torch.bfloat16)
        default = resnet_ext.resnet50().eval()
        for name, m in (("frozen fp32", frozen), ("frozen bf16", frozen_bf16), ("default fp32", default)):
            def run(m=m, img=img, stock=False):
                ops.max_pool = stock_pool if stock else ours_pool
                try:
                    with torch.no_grad():
                        m(img)
                finally:
                    ops.max_pool = ours_pool
            contenders[f"resnet50 {name} b{n}"] = (lambda run=run: run(stock=True), run)
    for fns in contenders.values():  # warm-up: plans, packed weights
        for f in fns:
            f()
            f()
    print(f"torch {torch.__version__}, {a.threads} threads, {a.rounds} rounds; times in ms (medians), ratio ATen/ours")
    for name, (stock, ours) in contenders.items():
        t_s, t_o = [], []
        for r in range(a.rounds):
            order = [(stock, t_s), (ours, t_o)] if r % 2 == 0 else [(ours, t_o), (stock, t_s)]
            for f, out in order:
                out.append(timed(f, 0.2) * 1e3)
        ratios = sorted(s / o for s, o in zip(t_s, t_o))
        print(f"{name:28s} ATen {statistics.median(t_s):8.3f}  ours {statistics.median(t_o):8.3f}  "
              f"ratio {statistics.median(ratios):.2f} ({ratios[0]:.2f}-{ratios[-1]:.2f})")


if __name__ == "__main__":
    main()
