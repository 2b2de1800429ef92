"""resnet50's twelve 1x1 conv shapes (stride 1) on small maps, channels_last, 2 threads: ATen's convolution against
the GEMM `engine.cpu.gemm_unit` runs (fp32: oneDNN's matmul on the plain weight; bf16: torch.mm), interleaved;
prints conv / GEMM per shape (above 1: the GEMM is faster) and the convolution's time.
Usage: python benchmarks/cpu_gemm_small_maps.py DTYPE MAPS [BATCH], e.g. float32 1,2,4,7,14 1"""
import statistics
import sys

import torch
import torch.nn.functional as F
import torch.utils.benchmark as tb

SHAPES = [(64, 256), (256, 64), (256, 128), (512, 128), (128, 512), (512, 256), (1024, 256), (256, 1024),
          (1024, 512), (2048, 512), (512, 2048), (1024, 2048)]


def main() -> None:
    torch.set_num_threads(2)
    dtype = getattr(torch, sys.argv[1])
    maps = [int(v) for v in sys.argv[2].split(",")]
    bs = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    for hw in maps:
        cells = []
        for c, k in SHAPES:
            x = torch.randn(bs, c, hw, hw, dtype=dtype).contiguous(memory_format=torch.channels_last)
            w = torch.randn(k, c, 1, 1, dtype=dtype)

            def rows():
                return x.permute(0, 2, 3, 1).reshape(-1, c)
            if dtype == torch.float32:
                def gemm():
                    return torch.ops.mkldnn._linear_pointwise(rows(), w.view(k, c), None, "none", [], "")
            else:
                def gemm():
                    return torch.mm(rows(), w.view(k, c).t())
            fns = {"conv": lambda: F.conv2d(x, w), "gemm": gemm}
            t = {n: [] for n in fns}
            for _ in range(3):
                for n, f in fns.items():
                    t[n].append(tb.Timer("f()", globals={"f": f}, num_threads=2).blocked_autorange(
                        min_run_time=0.05).median)
            t = {n: statistics.median(v) for n, v in t.items()}
            cells.append(f"{c}->{k}:{t['conv'] / t['gemm']:.2f}({t['conv'] * 1e6:.0f}us)")
        print(f"{sys.argv[1]} batch {bs} {hw}x{hw}: " + " ".join(cells), flush=True)


if __name__ == "__main__":
    main()
