"""The frozen mode's 1x1 units on resnet_ext's own GEMM (ops.conv1x1; engine/cpu.py: conv1x1_pays) inside whole
models, against oneDNN's convolution for every 1x1 ("onednn", the plan before the op). Contenders: "rule" (the
plan as it stands), "all" (every 1x1 the op takes), "heads" (only the blocks' first 1x1, the ones without a
residual that do not widen: K <= C, stride 1). Deep copies of one frozen model, interleaved rotated rounds,
per-round ratios against "onednn" (median, range); the logits' difference from "onednn" first.
Usage: python benchmarks/cpu_conv1x1_ab.py [ARCH] [BATCH] [cl|nchw] [bf16|fp32] [SIZE]   (2 threads; idle
machine; SIZE: the input's height and width, 224 unless given)."""
import copy
import statistics
import sys

import torch

from resnet_ext.cli import time_interleaved
from resnet_ext.engine import cpu
from cpu_gemm_rule_ab import describe, frozen_setup, patched  # run as a script: benchmarks/ is on the path

RULE = cpu.conv1x1_pays


def patched_all(u, x):
    saved = dict(cpu.CONV1X1_MAX_MACS)
    cpu.CONV1X1_MAX_MACS.update({k: 1 << 62 for k in saved})
    try:
        return RULE(u, x)
    finally:
        cpu.CONV1X1_MAX_MACS.update(saved)


def main() -> None:
    torch.set_num_threads(2)
    title, base, x = frozen_setup(sys.argv)
    rules = {"onednn": lambda u, x: False, "rule": RULE, "all": patched_all,
             "heads": lambda u, x: (c := u.conv).stride == (1, 1) and c.out_channels <= c.in_channels
             and patched_all(u, x)}
    fns = {k: patched(copy.deepcopy(base), cpu, "conv1x1_pays", r) for k, r in rules.items()}
    print(f"torch {torch.__version__}, {title}")
    describe(fns, x, "onednn", "conv1x1")
    with torch.no_grad():
        for _ in range(3):
            t, _ = time_interleaved(fns, x, 20 if x.numel() <= 3 * 224 * 224 else 8, {k: 2 for k in fns})
            line = " ".join(f"{k} {1e3 * statistics.median(v):.1f}" for k, v in t.items())
            for k in fns:
                if k != "onednn":
                    r = [a / b for a, b in zip(t["onednn"], t[k])]
                    line += f" | onednn/{k} {statistics.median(r):.3f} [{min(r):.2f}-{max(r):.2f}]"
            print("ms " + line, flush=True)


if __name__ == "__main__":
    main()
