"""The frozen plan's 1x1 residual tails on resnet_ext's op written over their residual (ops.conv1x1_add_,
engine/cpu.py: CONV1X1_IN_PLACE) against a new output each (ops.conv1x1 with the residual, the tails before
2026-12-06), inside whole models. Contenders: "new_output" (CONV1X1_IN_PLACE False), "in_place". Deep copies of one
frozen model, interleaved rotated rounds, each timed call right after an untimed one of its own (settle), per-round
ratios against "new_output" (median, range); first, each contender's conv1x1 units and the logits' difference.
Usage: python benchmarks/cpu_tail_in_place_ab.py [ARCH] [BATCH] [cl|nchw] [bf16|fp32] [SIZE]   (2 threads; idle
machine)."""
import copy
import sys

import torch

from resnet_ext.engine import cpu
from cpu_gemm_rule_ab import describe, frozen_rounds, frozen_setup, patched  # run as a script: benchmarks/ is on the path


def main() -> None:
    torch.set_num_threads(2)
    title, base, x = frozen_setup(sys.argv)
    fns = {"new_output": patched(copy.deepcopy(base), cpu, "CONV1X1_IN_PLACE", False),
           "in_place": patched(copy.deepcopy(base), cpu, "CONV1X1_IN_PLACE", True)}
    print(f"torch {torch.__version__}, {title}")
    describe(fns, x, "new_output", "conv1x1")
    frozen_rounds(fns, x, "new_output", settle=1)


if __name__ == "__main__":
    main()
