"""Where the CPU memory reuse (csrc/ops/cpu_memory.cpp; engine/cpu.py: reuse_pays) pays, by input size: the
default mode with the rule (below `REUSE_PIXELS` input pixels no reuse), with reuse at every size (the rule
before: `REUSE_PIXELS` 0) and with none (a huge `REUSE_PIXELS`), against torchvision on the same weights; eval
under no_grad, every contender a deep copy, interleaved rotated rounds, per-round time ratios (median) over three
repeats. Usage: python benchmarks/cpu_memory_sizes_ab.py ARCH {nchw,cl} DTYPE SIZES [BATCH]
e.g. resnet18 nchw float32 32,64,128 1   (2 threads; idle machine)."""
import copy
import statistics
import sys

import torch

from resnet_ext.cli import time_interleaved
from resnet_ext.engine import cpu
from cpu_default_sweep import pair  # run as a script: benchmarks/ is on the path
from cpu_gemm_rule_ab import patched


def main() -> None:
    torch.set_num_threads(2)
    arch, layout, dtype = sys.argv[1], sys.argv[2], getattr(torch, sys.argv[3])
    sizes = [int(s) for s in sys.argv[4].split(",")]
    batch = int(sys.argv[5]) if len(sys.argv) > 5 else 1
    tv, ours = pair(arch, dtype, layout == "cl")
    print(f"torch {torch.__version__}, {arch} {layout} {sys.argv[3]} batch {batch}; REUSE_PIXELS {cpu.REUSE_PIXELS}")
    for size in sizes:
        x = torch.randn(batch, 3, size, size, dtype=dtype)
        if layout == "cl":
            x = x.contiguous(memory_format=torch.channels_last)
        res = []
        for _ in range(3):
            fns = {"tv": copy.deepcopy(tv), "rule": copy.deepcopy(ours),
                   "always": patched(copy.deepcopy(ours), cpu, "REUSE_PIXELS", 0),
                   "never": patched(copy.deepcopy(ours), cpu, "REUSE_PIXELS", 1 << 62)}
            with torch.no_grad():
                t, _ = time_interleaved(fns, x, 40, {k: 3 for k in fns})

            def r(a, b):
                return statistics.median(p / q for p, q in zip(t[a], t[b]))
            res.append(" ".join(f"tv/{k} {r('tv', k):.3f}" for k in ("rule", "always", "never")))
        print(f"{size}x{size}: " + " || ".join(res), flush=True)


if __name__ == "__main__":
    main()
