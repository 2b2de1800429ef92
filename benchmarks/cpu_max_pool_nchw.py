"""NCHW max pooling on the CPU: ATen's NCHW pool (what torchvision's module runs on an NCHW map) against
`ops.max_pool`, which pools an NCHW map through channels_last and back (two copies, one channels_last kernel: ours
on AVX-512 CPUs, else ATen's), interleaved rounds in one process, the stem's pool (kernel 3, stride 2, padding 1)
on its maps. Prints per map the median times and the ratio per round (ATen / ops.max_pool) with its spread.

    python benchmarks/cpu_max_pool_nchw.py [--rounds 40] [--threads 2]
"""
import argparse
import statistics

import torch

import resnet_ext  # noqa: F401  (registers the ops)
from resnet_ext import ops
from resnet_ext.cli import time_interleaved


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    pool = torch.nn.MaxPool2d(3, 2, 1)
    for shape in ((1, 64, 112, 112), (2, 64, 112, 112), (8, 64, 112, 112), (1, 64, 224, 224), (1, 64, 56, 56)):
        x = torch.randn(shape)
        fns = {"aten_nchw": pool, "ops.max_pool": lambda t: ops.max_pool(pool, t)}
        with torch.no_grad():
            assert torch.equal(fns["aten_nchw"](x), fns["ops.max_pool"](x))
            assert fns["ops.max_pool"](x).is_contiguous()
            times, _ = time_interleaved(fns, x, a.rounds, {k: 3 for k in fns})
        r = [s / t for s, t in zip(times["aten_nchw"], times["ops.max_pool"])]
        print(f"{shape}: ATen NCHW {statistics.median(times['aten_nchw']) * 1e3:.3f} ms, ops.max_pool "
              f"{statistics.median(times['ops.max_pool']) * 1e3:.3f} ms, ATen / ops.max_pool "
              f"{statistics.median(r):.2f} ({min(r):.2f}-{max(r):.2f})")


if __name__ == "__main__":
    main()
