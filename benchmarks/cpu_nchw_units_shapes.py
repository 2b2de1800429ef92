"""Per conv: a 3x3 conv on a channels_last fp32 input with an NCHW weight (a model as constructed), three ways:
"cl" (ATen's convolution as it is called: it copies the weight to channels_last on every call, then oneDNN
reorders it), "nchw_unit" (engine/cpu.py's nchw_unit: NCHW copies of the input, ATen's NCHW convolution, the output
copied back to channels_last) and "gemm" (gemm_unit's GEMM: im2col rows by the weight as it lies). BN and ReLU
are left out (the same in all three). Medians of 7 interleaved rounds of 10 calls, us per call; the weight's
elements per element of the input (nchw_unit_pays' ratio) and the rules' choices.
Usage: python benchmarks/cpu_nchw_units_shapes.py   (2 threads; idle machine)."""
import statistics

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.benchmark import Timer

from resnet_ext.engine import cpu

# (input channels, input side, stride); output channels = input channels
SHAPES = [(64, 56, 1), (128, 28, 1), (256, 14, 1), (512, 7, 1), (128, 56, 2), (256, 28, 2), (512, 14, 2),
          (512, 4, 1), (512, 2, 1), (512, 1, 1), (256, 4, 1), (256, 2, 1), (256, 8, 1), (128, 8, 1), (256, 7, 2),
          (512, 4, 2)]


class Unit:
    def __init__(self, conv):
        self.conv = conv


def main() -> None:
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}; us per call, medians of 7 rounds of 10")
    for n in (1, 2, 4):
        for c, hw, s in SHAPES:
            x = torch.randn(n, c, hw, hw).contiguous(memory_format=torch.channels_last)
            conv = nn.Conv2d(c, c, 3, s, 1, bias=False)
            w = conv.weight.detach()

            def gemm():
                rows, wm = cpu.gemm_rows(x, conv)
                return torch.ops.mkldnn._linear_pointwise.default(rows, wm.contiguous(), None, "none", [], "")
            fns = {"cl": lambda: F.conv2d(x, w, None, s, 1),
                   "nchw_unit": lambda: F.conv2d(x.contiguous(), w, None, s, 1).contiguous(
                       memory_format=torch.channels_last),
                   "gemm": gemm}
            res = {k: [] for k in fns}
            with torch.no_grad():
                for _ in range(7):
                    for k, f in fns.items():
                        res[k].append(Timer("f()", globals={"f": f}, num_threads=2).timeit(10).median)
            med = {k: statistics.median(v) * 1e6 for k, v in res.items()}
            p = n * ((hw - 1) // s + 1) ** 2
            u = Unit(conv)
            print(f"n{n} {c}->{c} {hw}x{hw} s{s} P={p:4d} W/x={9 * c / (n * hw * hw):7.1f} "
                  f"nchw_unit_pays={cpu.nchw_unit_pays(u, x)!s:5} gemm_pays={cpu.gemm_pays(u, x)!s:5}: "
                  f"cl {med['cl']:6.0f} nchw_unit {med['nchw_unit']:6.0f} gemm {med['gemm']:6.0f} | "
                  f"cl/nchw_unit {med['cl'] / med['nchw_unit']:.2f} "
                  f"gemm/nchw_unit {med['gemm'] / med['nchw_unit']:.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
