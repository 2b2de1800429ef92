"""The frozen fp32 mode's 3x3 stride-1 convs by F(2x2, 3x3) where few tiles share a large weight (engine/cpu.py:
winograd_tile, WINOGRAD_F23_MAX_EXTRA), inside whole models. Contenders: "f43" (F(4x4) only, as before),
"default" (the rule as set), "x1024" (F(2x2) up to 1024 extra multiplies per weight element), "f23" (F(2x2) for
every Winograd unit). Deep copies of one frozen model, interleaved rotated rounds, per-round ratios f43 / X
(median, range); each contender's Winograd units and the logits' difference from f43 first.
Usage: python benchmarks/cpu_winograd_f23_ab.py [ARCH] [BATCH] [cl|nchw] [fp32] [SIZE]   (2 threads; idle machine)."""
import copy
import statistics
import sys

import torch

from resnet_ext.cli import time_interleaved
from resnet_ext.engine import cpu, state
from cpu_gemm_rule_ab import describe, frozen_setup, patched  # run as a script: benchmarks/ is on the path


def main() -> None:
    torch.set_num_threads(2)
    title, base, x = frozen_setup(sys.argv[:4] + ["fp32"] + sys.argv[5:])
    rules = {"f43": -1 << 40, "default": cpu.WINOGRAD_F23_MAX_EXTRA, "x1024": 1024, "f23": 1 << 40}
    models = {k: copy.deepcopy(base) for k in rules}
    fns = {k: patched(models[k], cpu, "WINOGRAD_F23_MAX_EXTRA", v) for k, v in rules.items()}
    print(f"torch {torch.__version__}, {title}; WINOGRAD_F23_MAX_EXTRA {cpu.WINOGRAD_F23_MAX_EXTRA}")
    describe(fns, x, "f43", "winograd")
    for k, m in models.items():  # the units the plan gave F(2x2): a [16, C, K] transformed weight
        program = next(iter(state.of(m).programs[2].values()))[0]
        print(f"  {k}: F(2x2) units {sum(wb[0] is cpu.WINO and wb[1].shape[0] == 16 for wb in program)}")
    with torch.no_grad():
        for _ in range(3):
            t, _ = time_interleaved(fns, x, 16 if x.shape[0] <= 2 else 6, {k: 2 for k in fns})
            print("  " + " ".join(f"{k} {1e3 * statistics.median(v):.1f}" for k, v in t.items()) + " ms | f43/X "
                  + " ".join(f"{k} {statistics.median(r):.3f} [{min(r):.2f}-{max(r):.2f}]" for k in fns if k != "f43"
                             for r in [[a / b for a, b in zip(t["f43"], t[k])]]), flush=True)


if __name__ == "__main__":
    main()
