"""What the CPU engine's memory reuse (csrc/ops/cpu_memory.cpp) is worth: the same models with and without it,
interleaved round by round in one process, with the page faults each forward takes.
Usage: python benchmarks/cpu_memory_ab.py [--arch resnet50] [--batch-size 8] [--rounds 15] [--nchw]
(2 threads, fp32, 224x224; run on an otherwise idle machine)."""
import argparse
import contextlib
import resource
import statistics

import torch

import resnet_ext
from resnet_ext.cli import time_interleaved
from resnet_ext.engine import cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--nchw", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(2)
    default = getattr(resnet_ext, args.arch)().eval()
    frozen = resnet_ext.freeze(getattr(resnet_ext, args.arch)().eval())
    x = torch.randn(args.batch_size, 3, 224, 224)
    if not args.nchw:
        x = x.contiguous(memory_format=torch.channels_last)
    reuse = cpu.reused_memory

    def without(model):
        def run(t):
            cpu.reused_memory = lambda on=True: reuse(False)  # the engine's scope, closed
            try:
                return model(t)
            finally:
                cpu.reused_memory = reuse
        return run

    fns = {"default": default, "default, no reuse": without(default),
           "frozen": frozen, "frozen, no reuse": without(frozen)}
    faults = {}
    with torch.no_grad():
        for name, fn in fns.items():
            fn(x)
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            fn(x)
            faults[name] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        times, _ = time_interleaved(fns, x, args.rounds, {n: 1 for n in fns})
    print(f"{args.arch}, batch {args.batch_size}, {'NCHW' if args.nchw else 'channels_last'}, "
          f"{args.rounds} interleaved rounds; torch {torch.__version__}")
    print(f"{'contender':<20} {'median ms':>10} {'page faults':>12}")
    for name, ts in times.items():
        print(f"{name:<20} {statistics.median(ts) * 1e3:>10.1f} {faults[name]:>12}")
    for mode in ("default", "frozen"):
        ratios = sorted(b / a for a, b in zip(times[mode], times[f"{mode}, no reuse"]))
        print(f"{mode}: reuse is {statistics.median(ratios):.2f}x faster "
              f"(per round {ratios[0]:.2f}-{ratios[-1]:.2f}x)")
    print("kept:", resnet_ext.cpu_memory_stats())


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
