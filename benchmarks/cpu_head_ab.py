"""The frozen mode's head as one op (engine/cpu.py: head_fits, ops.pool_linear: the average pool and fc in one call)
inside whole models, against the modules' path it replaces (the cast to fp32 for a bf16 model, ATen's average pool,
oneDNN's linear). Contenders: "modules" (HEAD_MAX_BATCH -1: the head never fits), "head" (HEAD_MAX_BATCH as it is).
Deep copies of one frozen model, interleaved rotated rounds, each timed call right after an untimed one of its own
(settle), per-round ratios against "modules" (median, range); first, each contender's pool_linear count and the
logits' difference.
Usage: python benchmarks/cpu_head_ab.py [ARCH] [BATCH] [cl|nchw] [bf16|fp32] [SIZE]   (2 threads; idle machine)."""
import copy
import sys

import torch

from resnet_ext.engine import cpu
from cpu_gemm_rule_ab import describe, frozen_rounds, frozen_setup, patched  # run as a script: benchmarks/ is on the path


def main() -> None:
    torch.set_num_threads(2)
    title, base, x = frozen_setup(sys.argv)
    fns = {"modules": patched(copy.deepcopy(base), cpu, "HEAD_MAX_BATCH", -1),
           "head": patched(copy.deepcopy(base), cpu, "HEAD_MAX_BATCH", cpu.HEAD_MAX_BATCH)}
    print(f"torch {torch.__version__}, {title}")
    with torch.no_grad():
        for f in fns.values():
            f(x)
    describe(fns, x, "modules", cpu.HEAD)
    frozen_rounds(fns, x, "modules", settle=1)


if __name__ == "__main__":
    main()
