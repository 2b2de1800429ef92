"""The frozen mode's stem conv on resnet_ext's own op (ops.conv_stem; engine/cpu.py: stem_pays) inside whole models,
against oneDNN's convolution on its prepacked weight ("onednn", the plan before the op). Contenders: "onednn",
"stem" (the op for the stem in either dtype, whatever STEM_DTYPES says). Deep copies of one frozen model,
interleaved rotated rounds, per-round ratios against "onednn" (median, range); the logits' difference first.
Usage: python benchmarks/cpu_stem_ab.py [ARCH] [BATCH] [cl|nchw] [bf16|fp32] [SIZE]   (2 threads; idle machine;
SIZE: the input's height and width, 224 unless given)."""
import copy
import statistics
import sys

import torch

from resnet_ext.cli import time_interleaved
from resnet_ext.engine import cpu
from cpu_gemm_rule_ab import describe, frozen_setup, patched  # run as a script: benchmarks/ is on the path


def main() -> None:
    torch.set_num_threads(2)
    title, base, x = frozen_setup(sys.argv)
    fns = {"onednn": patched(copy.deepcopy(base), cpu, "STEM_DTYPES", ()),
           "stem": patched(copy.deepcopy(base), cpu, "STEM_DTYPES", (torch.float32, torch.bfloat16))}
    print(f"torch {torch.__version__}, {title}")
    describe(fns, x, "onednn", "conv_stem")
    with torch.no_grad():
        for _ in range(3):
            t, _ = time_interleaved(fns, x, 20 if x.numel() <= 3 * 224 * 224 else 8, {k: 2 for k in fns})
            r = [a / b for a, b in zip(t["onednn"], t["stem"])]
            print(" ".join(f"{k} {1e3 * statistics.median(v):.1f}" for k, v in t.items())
                  + f" ms | onednn/stem {statistics.median(r):.3f} [{min(r):.2f}-{max(r):.2f}]", flush=True)


if __name__ == "__main__":
    main()
