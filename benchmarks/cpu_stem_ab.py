"""The frozen mode's stem conv on resnet_ext's own op (ops.conv_stem; engine/cpu.py: stem_pays) inside whole models,
against oneDNN's convolution on its prepacked weight ("onednn", the plan before the op). Contenders: "onednn",
"stem" (the op for the stem in either dtype, whatever STEM_DTYPES says). Deep copies of one frozen model,
interleaved rotated rounds, per-round ratios against "onednn" (median, range); the logits' difference first.
Usage: python benchmarks/cpu_stem_ab.py [ARCH] [BATCH] [cl|nchw] [bf16|fp32] [SIZE]   (2 threads; idle machine;
SIZE: the input's height and width, 224 unless given)."""
import copy
import sys

import torch

from resnet_ext.engine import cpu
from cpu_gemm_rule_ab import describe, frozen_rounds, frozen_setup, patched  # run as a script: benchmarks/ is on the path


def main() -> None:
    torch.set_num_threads(2)
    title, base, x = frozen_setup(sys.argv)
    fns = {"onednn": patched(copy.deepcopy(base), cpu, "STEM_DTYPES", ()),
           "stem": patched(copy.deepcopy(base), cpu, "STEM_DTYPES", (torch.float32, torch.bfloat16))}
    print(f"torch {torch.__version__}, {title}")
    describe(fns, x, "onednn", "conv_stem")
    frozen_rounds(fns, x, "onednn")


if __name__ == "__main__":
    main()
