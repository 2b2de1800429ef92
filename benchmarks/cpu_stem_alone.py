"""The frozen CPU ops alone, caches warm, 2 threads (torch.utils.benchmark, which runs one thread unless told):
  stem   the stem's 7x7 conv: oneDNN's convolution on its prepacked weight (as the frozen plan calls it, fused ReLU)
         against ops.conv_stem, bf16 and fp32, batch 1 and 8, both input layouts;
  3x3    conv_stem's way (kernel rows read in place from a padded copy) on resnet's stride-2 3x3 convs and layer 4's
         3x3, against oneDNN, bf16, at THREADS threads (default 2);
  fc     the fc's fp32 weight (2048 x 1000, 8 MB) at batch 1, in cache against evicted by a 64 MB pass, 1 thread.
Usage: python benchmarks/cpu_stem_alone.py stem|3x3|fc [THREADS]   (idle machine)."""
import sys

import torch
from torch.utils import benchmark

from resnet_ext import ops
from resnet_ext.engine import cpu

PW = torch.ops.mkldnn._convolution_pointwise.default


def timed(stmt, threads, **env):
    return benchmark.Timer(stmt, globals=env, num_threads=threads).blocked_autorange(min_run_time=1).median


def stem() -> None:
    print("dtype, batch, layout | oneDNN ms | conv_stem ms | ratio")
    for dt in (torch.bfloat16, torch.float32):
        for n in (1, 8):
            for cl in (True, False):
                x = torch.randn(n, 3, 224, 224).to(dt)
                w = torch.randn(64, 3, 7, 7).to(dt)
                if cl:
                    x, w = (t.contiguous(memory_format=torch.channels_last) for t in (x, w))
                b = torch.randn(64).to(dt)
                wp = torch.ops.mkldnn._reorder_convolution_weight(w, [3, 3], [2, 2], [1, 1], 1, list(x.shape))
                ws, bf = ops.conv_stem_weight(w), b.float()
                with torch.inference_mode(), cpu.reused_memory():
                    a = timed("pw(x, wp, b, [3, 3], [2, 2], [1, 1], 1, 'relu', [], '')", 2, pw=PW, x=x, wp=wp, b=b)
                    s = timed("f(x, ws, bf, True, 7, 2, 3)", 2, f=ops.conv_stem, x=x, ws=ws, bf=bf)
                print(f"{str(dt)[6:]}, {n}, {'channels_last' if cl else 'NCHW'} | {a * 1e3:.3f} | {s * 1e3:.3f} | "
                      f"{a / s:.2f}", flush=True)


def conv3x3(threads: int) -> None:
    print(f"N, C, H, K, stride (bf16, {threads} threads) | oneDNN us | conv_stem's way us | ratio | bitwise equal")
    for n, c, h, k, s in [(1, 128, 56, 128, 2), (1, 256, 28, 256, 2), (1, 512, 14, 512, 2), (1, 512, 7, 512, 1),
                          (8, 512, 7, 512, 1)]:
        x = torch.randn(n, c, h, h).bfloat16().contiguous(memory_format=torch.channels_last)
        w = (torch.randn(k, c, 3, 3) * (2 / (9 * c)) ** 0.5).bfloat16()
        b = torch.randn(k).bfloat16()
        wp = torch.ops.mkldnn._reorder_convolution_weight(w, [1, 1], [s, s], [1, 1], 1, list(x.shape))
        ws, bf = ops.conv_stem_weight(w), b.float()
        with torch.inference_mode(), cpu.reused_memory():
            a = timed("pw(x, wp, b, [1, 1], [s, s], [1, 1], 1, 'relu', [], '')", threads, pw=PW, x=x, wp=wp, b=b, s=s)
            d = timed("f(x, ws, bf, True, 3, s, 1)", threads, f=ops.conv_stem, x=x, ws=ws, bf=bf, s=s)
            same = torch.equal(PW(x, wp, b, [1, 1], [s, s], [1, 1], 1, "relu", [], ""),
                               ops.conv_stem(x, ws, bf, True, 3, s, 1))
        print(f"{n}, {c}, {h}, {k}, {s} | {a * 1e6:.0f} | {d * 1e6:.0f} | {a / d:.2f} | {same}", flush=True)


def fc() -> None:
    lin = torch.nn.Linear(2048, 1000)
    x = torch.randn(1, 2048)
    big = torch.randn(16 << 20)  # 64 MB, twice the L3 of the machine measured

    def cold():
        big.add_(1)
        return lin(x)

    with torch.inference_mode():
        hot = timed("f()", 1, f=lambda: lin(x))
        evict = timed("f()", 1, f=lambda: big.add_(1))
        both = timed("f()", 1, f=cold)
    print(f"fc at batch 1, 1 thread: weight in cache {hot * 1e6:.0f} us; evicted {(both - evict) * 1e6:.0f} us "
          f"(the 64 MB pass {evict * 1e6:.0f} us, subtracted)")


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "stem"
    {"stem": stem, "3x3": lambda: conv3x3(int(sys.argv[2]) if len(sys.argv) > 2 else 2), "fc": fc}[mode]()
