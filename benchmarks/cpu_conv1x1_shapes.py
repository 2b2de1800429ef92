"""ops.conv1x1 against oneDNN's convolution (ATen's mkldnn op on a prepacked weight, fused ReLU / residual add, as
the frozen plan calls them: both add a residual in place, ours by ops.conv1x1_add_, whose out-of-place time, a new
output, is printed after it) on resnet50's 1x1 shapes at 224x224, one call at a time with the caches flushed before
each (a 64 MiB write), as inside a forward where each layer's weight comes from memory; best of three medians of
25 calls each, and both outputs' largest error from float64 (with the same bf16/fp32 operands).
Usage: python benchmarks/cpu_conv1x1_shapes.py [bf16|fp32] [BATCH]   (2 threads; idle machine)."""
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from resnet_ext import ops

# (C, K, H = W of the input, stride, residual): heads, tails (with the residual) and downsamples.
SHAPES = [(64, 64, 56, 1, 0), (64, 256, 56, 1, 1), (256, 64, 56, 1, 0), (256, 128, 56, 1, 0), (256, 512, 56, 2, 0),
          (128, 512, 28, 1, 1), (512, 128, 28, 1, 0), (512, 256, 28, 1, 0), (512, 1024, 28, 2, 0),
          (256, 1024, 14, 1, 1), (1024, 256, 14, 1, 0), (1024, 512, 14, 1, 0), (1024, 2048, 14, 2, 0),
          (512, 2048, 7, 1, 1), (2048, 512, 7, 1, 0)]


def main() -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if (sys.argv[1] if len(sys.argv) > 1 else "bf16") == "bf16" else torch.float32
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    flush = torch.empty(64 << 20, dtype=torch.uint8)

    def median_us(fn, calls=25):
        ts = []
        for _ in range(calls):
            flush.add_(1)
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return statistics.median(ts) * 1e6

    print(f"torch {torch.__version__}, {dtype}, batch {n}: oneDNN / conv1x1 per call (us), errors vs float64")
    total = [0.0, 0.0]
    for c, k, hw, s, res in SHAPES:
        x = torch.randn(n, c, hw, hw).to(dtype).contiguous(memory_format=torch.channels_last)
        w = (torch.randn(k, c, 1, 1) / c ** 0.5).to(dtype)
        b = torch.randn(k).to(dtype)
        oh = (hw - 1) // s + 1
        r = torch.randn(n, k, oh, oh).to(dtype).contiguous(memory_format=torch.channels_last) if res else None
        args = ([0, 0], [s, s], [1, 1], 1)
        packed = torch.ops.mkldnn._reorder_convolution_weight(w, *args, list(x.shape))
        mine, bias = ops.conv1x1_weight(w), b.float()
        scratch = None if r is None else r.clone()  # oneDNN adds into the residual in place, as in the forward

        def onednn(into=None):
            if r is None:
                return torch.ops.mkldnn._convolution_pointwise(x, packed, b, *args, "relu", [], "")
            return torch.ops.mkldnn._convolution_pointwise_.binary(into if into is not None else scratch, x, packed,
                                                                   b, *args, "add", 1.0, "relu", [], "")

        mine_scratch = None if r is None else r.clone()

        def ours(into=None):  # as the plan calls it: a residual tail adds in place (conv1x1_add_)
            if r is None:
                return ops.conv1x1(x, mine, bias, None, True, s)
            return ops.conv1x1_add_(into if into is not None else mine_scratch, x, mine, bias, True, s)

        def ours_out_of_place():  # the tails before 2026-12-06: a new output
            return ops.conv1x1(x, mine, bias, r, True, s)

        ref = F.conv2d(x.double(), w.double(), b.double(), stride=s)
        ref = torch.relu(ref + r.double() if r is not None else ref)
        errs = [((y.double() - ref).abs().max() / ref.abs().max()).item()
                for y in (onednn(None if r is None else r.clone()), ours(None if r is None else r.clone()))]
        a = min(median_us(onednn) for _ in range(3))
        o = min(median_us(ours) for _ in range(3))
        total[0] += a
        total[1] += o
        extra = "" if r is None else f"   (out of place {min(median_us(ours_out_of_place) for _ in range(3)):.0f})"
        print(f"{c:5} -> {k:4} {hw:2}x{hw:<2} stride {s} residual {res}: {a:7.0f} / {o:7.0f} = {a / o:.2f}x   "
              f"errors {errs[0]:.1e} / {errs[1]:.1e}{extra}", flush=True)
    print(f"sum: {total[0]:.0f} / {total[1]:.0f} = {total[0] / total[1]:.2f}x")


if __name__ == "__main__":
    main()
