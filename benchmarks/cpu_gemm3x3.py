"""The ResNets' 3x3 conv shapes as a GEMM on the conv's own weight (`engine.cpu.gemm_unit`'s conv: im2col in the
weight's memory order, then oneDNN's matmul for fp32 or torch.mm for bf16) against ATen's convolution, channels_last
input, the weight as constructed (contiguous) or converted with the model (channels_last), 2 threads, interleaved
rotated rounds; prints conv / GEMM per shape (above 1: the GEMM is faster) and the convolution's time.
Usage: python benchmarks/cpu_gemm3x3.py DTYPE BATCH MAPS [--stride2], e.g. float32 1 2,4,7,14"""
import statistics
import sys

import torch
import torch.nn.functional as F
import torch.utils.benchmark as tb

from resnet_ext.engine import cpu

STRIDE1 = [(64, 64), (128, 128), (256, 256), (512, 512)]  # (in, out): every ResNet's stride-1 3x3 convs
STRIDE2 = [(64, 128), (128, 256), (256, 512), (128, 128), (256, 256), (512, 512)]  # BasicBlock's, Bottleneck's


def gemm_conv(x, conv):
    rows, wm = cpu.gemm_rows(x, conv)
    if rows.dtype == torch.float32:
        return torch.ops.mkldnn._linear_pointwise.default(rows, wm.contiguous(), None, "none", [], "")
    return torch.mm(rows, wm.t())


def main() -> None:
    torch.set_num_threads(2)
    dtype, batch = getattr(torch, sys.argv[1]), int(sys.argv[2])
    maps = [int(v) for v in sys.argv[3].split(",")]
    stride = 2 if "--stride2" in sys.argv else 1
    print(f"torch {torch.__version__}, {dtype}, batch {batch}, stride {stride}, AMX_BF16 {cpu.AMX_BF16}")
    for hw in maps:
        line = []
        for cin, cout in STRIDE2 if stride == 2 else STRIDE1:
            for wl in ("contiguous", "channels_last"):
                conv = torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False).to(dtype)
                if wl == "channels_last":
                    conv = conv.to(memory_format=torch.channels_last)
                x = torch.randn(batch, cin, hw, hw, dtype=dtype).contiguous(memory_format=torch.channels_last)
                w = conv.weight.detach()
                fns = {"conv": lambda: F.conv2d(x, w, None, stride, 1), "gemm": lambda: gemm_conv(x, conv)}
                times = {k: [] for k in fns}
                with torch.no_grad():
                    for r in range(12):
                        for k in (("conv", "gemm") if r % 2 == 0 else ("gemm", "conv")):
                            times[k].append(tb.Timer("f()", globals={"f": fns[k]}).timeit(5).median)
                ratio = statistics.median(c / g for c, g in zip(times["conv"], times["gemm"]))
                line.append(f"{cin}->{cout}{'cl' if wl == 'channels_last' else ''}:{ratio:.2f}"
                            f"({1e6 * statistics.median(times['conv']):.0f}us)")
        print(f"{hw}x{hw}: " + " ".join(line), flush=True)


if __name__ == "__main__":
    main()
