"""Per conv: the default mode's fp32 F(2x2, 3x3) unit (engine/cpu.py: winograd_unit; the weight transformed on the
call) against the stock convolution of a channels_last input, for resnet's 3x3 stride-1 shapes at several batch
sizes, the weight channels_last (a converted model) and NCHW (as constructed; there also the NCHW unit, nchw_unit,
where nchw_unit_pays). BN is left out (the same in all). Inside the engine's reused memory, as in a forward.
Medians of 5 interleaved rounds, us per call; the 2x2 tiles and the rule's choice (winograd_default_pays) per
shape.
Usage: python benchmarks/cpu_default_winograd_shapes.py [N,C,SIDE ...]   (2 threads; idle machine; default: batch
1, 2, 4 and 8 at SHAPES); with "weight": the transform alone (ops.winograd_weight(w, 2)) for C = K of 64 to 512."""
import statistics
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.benchmark import Timer

from resnet_ext import ops
from resnet_ext.engine import cpu

SHAPES = [(64, 56), (128, 28), (256, 14), (512, 7)]  # (channels, side): resnet's stride-1 3x3 convs at 224x224


class Unit:
    def __init__(self, conv):
        self.conv = conv
        self.geometry = ((1, 1), (1, 1), (1, 1), 1)


def weight_only() -> None:
    print(f"torch {torch.__version__}; ops.winograd_weight(w, 2), us per call, medians of 5 rounds of 5")
    for c in (64, 128, 256, 512):
        w = torch.randn(c, c, 3, 3)
        wcl = w.contiguous(memory_format=torch.channels_last)
        fns = {"NCHW": lambda: ops.winograd_weight(w, 2), "channels_last": lambda: ops.winograd_weight(wcl, 2)}
        res = {k: [] for k in fns}
        with cpu.reused_memory(True):
            for _ in range(5):
                for k, f in fns.items():
                    res[k].append(Timer("f()", globals={"f": f}, num_threads=2).timeit(5).median)
        print(f"{c} x {c}: " + "  ".join(f"{k} {statistics.median(v) * 1e6:6.0f}" for k, v in res.items()), flush=True)


def main() -> None:
    torch.set_num_threads(2)
    if sys.argv[1:] == ["weight"]:
        return weight_only()
    print(f"torch {torch.__version__}; us per call, medians of 5 rounds")
    cases = [tuple(map(int, a.split(","))) for a in sys.argv[1:]] or [(n, c, hw) for n in (1, 2, 4, 8)
                                                                       for c, hw in SHAPES]
    for n, c, hw in cases:
        if True:
            x = torch.randn(n, c, hw, hw).contiguous(memory_format=torch.channels_last)
            zeros = torch.zeros(c)
            for layout in ("channels_last", "nchw"):
                conv = nn.Conv2d(c, c, 3, 1, 1, bias=False)
                if layout == "channels_last":
                    conv = conv.to(memory_format=torch.channels_last)
                w = conv.weight.detach()
                fns = {"stock": lambda: F.conv2d(x, w, None, 1, 1),
                       "winograd": lambda: ops.winograd3x3(x, ops.winograd_weight(w, 2), zeros, None, False)}
                u = Unit(conv)
                if layout == "nchw" and cpu.nchw_unit_pays(u, x):
                    fns["nchw_unit"] = lambda: F.conv2d(x.contiguous(), w, None, 1, 1).contiguous(
                        memory_format=torch.channels_last)
                res = {k: [] for k in fns}
                reps = max(1, 8 // n)
                with torch.no_grad(), cpu.reused_memory(True):
                    for _ in range(5):
                        for k, f in fns.items():
                            res[k].append(Timer("f()", globals={"f": f}, num_threads=2).timeit(reps).median)
                med = {k: statistics.median(v) * 1e6 for k, v in res.items()}
                tiles = n * ((hw + 1) // 2) ** 2
                best_other = min(v for k, v in med.items() if k != "winograd")
                print(f"n{n} {c}x{hw} {layout:13s} tiles {tiles:4d} pays={cpu.winograd_default_pays(u, x)!s:5}: "
                      + " ".join(f"{k} {v:7.0f}" for k, v in med.items())
                      + f" | best other / winograd {best_other / med['winograd']:.2f}", flush=True)


if __name__ == "__main__":
    main()
