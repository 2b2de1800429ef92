"""The frozen mode's prefetch of the next unit's weight (engine/cpu.py: prefetch_pays, with_prefetch; the ops'
prefetch_addr/prefetch_bytes) inside whole models, against the same plan without it. Contenders: "none"
(cpu_prefetch(False)), "units" (cpu_prefetch(True) with the last unit fetching nothing: PREFETCH_FC False),
"prefetch" (cpu_prefetch(True), the last unit fetching the fc's weight); both with PREFETCH_PIXELS lifted, so
they prefetch at any input size. Deep copies of one frozen
model, interleaved rotated rounds, each timed call right after an untimed one of its own (settle), per-round ratios
against "none" (median, range); first, on each contender's second call (the first plans, without
prefetches), its prefetching units and the logits' difference (a prefetch changes no value: 0).
Usage: python benchmarks/cpu_prefetch_ab.py [ARCH] [BATCH] [cl|nchw] [bf16|fp32] [SIZE]   (2 threads; idle machine;
SIZE: the input's height and width, 224 unless given)."""
import copy
import sys

import torch

import resnet_ext
from resnet_ext.engine import cpu
from cpu_gemm_rule_ab import describe, frozen_rounds, frozen_setup, patched  # run as a script: benchmarks/ is on the path


def switched(model, on: bool):
    """model(x) with cpu_prefetch(on) for the call, then the setting restored."""
    def f(x):
        before = resnet_ext.cpu_prefetch(on)
        try:
            return model(x)
        finally:
            resnet_ext.cpu_prefetch(before)
    return f


def main() -> None:
    torch.set_num_threads(2)
    title, base, x = frozen_setup(sys.argv)
    fns = {"none": switched(copy.deepcopy(base), False),
           "units": switched(patched(patched(copy.deepcopy(base), cpu, "PREFETCH_PIXELS", 1 << 40), cpu,
                                     "PREFETCH_FC", False), True),
           "prefetch": switched(patched(copy.deepcopy(base), cpu, "PREFETCH_PIXELS", 1 << 40), True)}
    print(f"torch {torch.__version__}, {title}")
    with torch.no_grad():  # plan first: the call that plans runs without prefetches
        for f in fns.values():
            f(x)
    describe(fns, x, "none", "prefetch")
    frozen_rounds(fns, x, "none", settle=1)


if __name__ == "__main__":
    main()
