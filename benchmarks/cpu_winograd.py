"""The frozen CPU mode's Winograd units against oneDNN (resnet_ext/engine/cpu.py: winograd_pays): for every
stride-1 3x3 conv shape of resnet50 (and its layer-4 size at small inputs), one call of
  winograd  ops.winograd3x3 on the transformed folded weight (F(4x4, 3x3) in fp32, F(2x2, 3x3) in bf16)
  onednn    oneDNN's convolution on the folded weight prepacked for this input (what the plan runs otherwise)
interleaved round by round inside the engine's memory reuse; prints the medians and the median and range of
the per-round ratios onednn / winograd (above 1: Winograd faster).
Usage: python benchmarks/cpu_winograd.py [fp32|bf16] [batch ...]   (2 threads; run on an otherwise idle machine)."""
import statistics
import sys

import torch

from resnet_ext import ops
from resnet_ext.cli import time_interleaved
from resnet_ext.engine.cpu import reused_memory

SHAPES = [(64, 56), (128, 28), (256, 14), (512, 7), (512, 4)]  # (channels, input size); K = C, padding 1
ROUNDS = 25


def main(dtype: torch.dtype, batches) -> None:
    torch.set_num_threads(2)
    pw = torch.ops.mkldnn._convolution_pointwise.default
    name = "bf16" if dtype == torch.bfloat16 else "fp32"
    print(f"{name}, channels_last, 2 threads, {ROUNDS} interleaved rounds: N C H | winograd us | onednn us | "
          f"onednn / winograd per round: median (min-max) | max |diff| / max |onednn|")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n in batches:
            for c, h in SHAPES:
                x = torch.randn(n, c, h, h, generator=g).relu().to(dtype).contiguous(memory_format=torch.channels_last)
                # Folded as the frozen mode folds: fp32, channels_last, then rounded to the compute dtype.
                w = (torch.randn(c, c, 3, 3, generator=g) * (2 / (9 * c)) ** 0.5).contiguous(
                    memory_format=torch.channels_last).to(dtype)
                b = (torch.randn(c, generator=g) * 0.1).to(dtype)
                u = ops.winograd_weight(w)
                wp = torch.ops.mkldnn._reorder_convolution_weight(w, [1, 1], [1, 1], [1, 1], 1, list(x.shape))
                fns = {"winograd": lambda _x: ops.winograd3x3(x, u, b, None, True),
                       "onednn": lambda _x: pw(x, wp, b, [1, 1], [1, 1], [1, 1], 1, "relu", [], "")}
                with reused_memory():
                    ref = fns["onednn"](None).float()
                    err = ((fns["winograd"](None).float() - ref).abs().max() / ref.abs().max()).item()
                    times, _ = time_interleaved(fns, None, ROUNDS, {k: 3 for k in fns})
                ratios = sorted(o / w_ for o, w_ in zip(times["onednn"], times["winograd"]))
                us = {k: statistics.median(t) * 1e6 for k, t in times.items()}
                print(f"{n} {c} {h} | {us['winograd']:8.0f} | {us['onednn']:8.0f} | {statistics.median(ratios):.2f}x "
                      f"({ratios[0]:.2f}-{ratios[-1]:.2f}) | {err:.1e}")


if __name__ == "__main__":
    args = sys.argv[1:]
    dt = torch.bfloat16 if args and args[0] == "bf16" else torch.float32
    if args and args[0] in ("fp32", "bf16"):
        args = args[1:]
    main(dt, [int(a) for a in args] or [1, 8])
