"""ops.conv_direct against oneDNN's convolution (ATen's mkldnn op on a prepacked weight with fused ReLU, as the
frozen plan calls it) on the kxk convs Winograd leaves to oneDNN in resnet50 at 224x224: the three 3x3 stride-2
convs and layer 4's 3x3 stride 1 (run by oneDNN below WINOGRAD_MIN_TILES_BF16 at batch 1); per shape both timings,
caches warm (each contender called right after itself, medians of 7 interleaved rounds of 5 calls) and cold (a 64 MiB
write before each call, the best of 3 such calls per round, median over rounds), and both outputs' largest error from
float64 (with the same bf16/fp32 operands).
Usage: python benchmarks/cpu_direct_shapes.py [bf16|fp32] [BATCH]   (2 threads; idle machine)."""
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from resnet_ext import ops

# (C, K, H = W of the input, stride): resnet50's 3x3 stride-2 convs and layer 4's 3x3 stride 1.
SHAPES = [(128, 128, 56, 2), (256, 256, 28, 2), (512, 512, 14, 2), (512, 512, 7, 1)]


def main() -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if (sys.argv[1] if len(sys.argv) > 1 else "bf16") == "bf16" else torch.float32
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    flush = torch.empty(64 << 20, dtype=torch.uint8)
    print(f"torch {torch.__version__}, {dtype}, batch {n}: us per call, warm / cold; oneDNN's time / conv_direct's; "
          "errors vs float64")
    for c, k, hw, s in SHAPES:
        x = torch.randn(n, c, hw, hw).to(dtype).contiguous(memory_format=torch.channels_last)
        w = (torch.randn(k, c, 3, 3) * (2 / (9 * c)) ** 0.5).to(dtype)
        b = torch.randn(k).to(dtype)
        args = ([1, 1], [s, s], [1, 1], 1)
        packed = torch.ops.mkldnn._reorder_convolution_weight(w, *args, list(x.shape))
        mine, bias = ops.conv_direct_weight(w), b.float()
        fns = {"onednn": lambda: torch.ops.mkldnn._convolution_pointwise(x, packed, b, *args, "relu", [], ""),
               "direct": lambda: ops.conv_direct(x, mine, bias, True, 3, s, 1)}
        ref = torch.relu(F.conv2d(x.double(), w.double(), b.double(), stride=s, padding=1))
        errs = {name: ((f().double() - ref).abs().max() / ref.abs().max()).item() for name, f in fns.items()}
        warm = {name: [] for name in fns}
        cold = {name: [] for name in fns}
        for _ in range(7):
            for name, f in fns.items():
                f()
                t = time.perf_counter()
                for _ in range(5):
                    f()
                warm[name].append((time.perf_counter() - t) / 5 * 1e6)
                ts = []
                for _ in range(3):
                    flush.add_(1)
                    t = time.perf_counter()
                    f()
                    ts.append(time.perf_counter() - t)
                cold[name].append(min(ts) * 1e6)
        w_o, w_d = statistics.median(warm["onednn"]), statistics.median(warm["direct"])
        c_o, c_d = statistics.median(cold["onednn"]), statistics.median(cold["direct"])
        print(f"{c:4} -> {k:4} {hw:2}x{hw:<2} stride {s}: oneDNN {w_o:6.0f} / {c_o:6.0f}, direct {w_d:6.0f} / "
              f"{c_d:6.0f}: {w_o / w_d:.2f}x / {c_o / c_d:.2f}x   errors {errs['onednn']:.1e} / {errs['direct']:.1e}",
              flush=True)


if __name__ == "__main__":
    main()
