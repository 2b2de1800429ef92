"""What the frozen mode's per-forward write check costs inside real forwards: `_C.FoldSources.holds()` (every
conv and BN tensor's version counter and storage, engine/frozen.py) and `Structure.state` (the structure check,
which since the same change also compares each BN's tensor objects), each timed around its call in the forward
it guards (so cold, as at batch 1 the forward streams its weights through the cache), and the whole forward.
Prints, per configuration and round, the medians over 20 forwards (4 at batch 8) after 3.
Usage: python benchmarks/cpu_fold_sources_cost.py [ROUNDS]   (2 threads; idle machine)."""
import statistics
import sys
import time

import torch

import resnet_ext
from resnet_ext.engine import state, structure

CONFIGS = [("resnet50", 1, 224, torch.bfloat16), ("resnet101", 1, 224, torch.bfloat16), ("resnet50", 1, 224, None),
           ("resnet18", 1, 64, None), ("resnet18", 1, 32, None), ("resnet50", 8, 224, torch.bfloat16)]


class Timed:
    """Stands in for a model's FoldSources, timing each holds()."""

    def __init__(self, real):
        self.real, self.ns = real, []

    def holds(self):
        t = time.perf_counter_ns()
        r = self.real.holds()
        self.ns.append(time.perf_counter_ns() - t)
        return r


def main() -> None:
    torch.set_num_threads(2)
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    state_of, structure_ns = structure.Structure.state, []

    def timed_state(self, model):
        t = time.perf_counter_ns()
        r = state_of(self, model)
        structure_ns.append(time.perf_counter_ns() - t)
        return r

    structure.Structure.state = timed_state
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for r in range(rounds):
        for arch, n, side, dtype in CONFIGS:
            m = resnet_ext.freeze(getattr(resnet_ext, arch)(), dtype=dtype)
            x = torch.randn(n, 3, side, side).contiguous(memory_format=torch.channels_last)
            st = state.of(m)
            with torch.no_grad():
                for _ in range(3):
                    m(x)
                st.sources = sources = Timed(st.sources)
                structure_ns.clear()
                calls = 20 if n == 1 else 4
                t0 = time.perf_counter()
                for _ in range(calls):
                    m(x)
                fwd = (time.perf_counter() - t0) / calls
            hold, struct = statistics.median(sources.ns) / 1e3, statistics.median(structure_ns) / 1e3
            print(f"round {r} {arch} {n}x3x{side}x{side} {'bf16' if dtype else 'fp32'}: forward {fwd * 1e3:.2f} ms, "
                  f"FoldSources.holds {hold:.1f} us ({hold / 1e3 / (fwd * 1e3) * 100:.2f}%), "
                  f"Structure.state {struct:.1f} us ({len(sources.real)} tensors watched)")


if __name__ == "__main__":
    main()
