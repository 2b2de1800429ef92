"""The default mode's fp32 3x3 stride-1 convs by F(2x2, 3x3) on the live weight (engine/cpu.py: winograd_unit,
winograd_default_pays) inside whole models, against the stock convolution ("stock": the minimum of tiles
infinite), with torchvision for scale. Deep copies of one model (the layout of the input, channels_last unless
nchw), interleaved rotated rounds, per-round ratios stock / winograd and torchvision / winograd (median, range);
each contender's Winograd units and the logits' distance from float64 first.
Usage: python benchmarks/cpu_default_winograd_ab.py [ARCH] [BATCH] [cl|nchw]   (2 threads; idle machine)."""
import copy
import statistics
import sys

import torch
import torchvision

import resnet_ext
from resnet_ext.cli import time_interleaved
from resnet_ext.engine import cpu
from cpu_gemm_rule_ab import describe_float64, patched  # run as a script: benchmarks/ is on the path


def main() -> None:
    torch.set_num_threads(2)
    arch = sys.argv[1] if len(sys.argv) > 1 else "resnet50"
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    fmt = torch.contiguous_format if (sys.argv[3] if len(sys.argv) > 3 else "cl") == "nchw" else torch.channels_last
    tv = getattr(torchvision.models, arch)().eval().to(memory_format=fmt)
    base = resnet_ext.from_torchvision(copy.deepcopy(tv)).eval()
    x = torch.randn(batch, 3, 224, 224).contiguous(memory_format=fmt)
    fns = {"torchvision": tv,
           "stock": patched(copy.deepcopy(base), cpu, "WINOGRAD_DEFAULT_MIN_TILES", 1 << 62),
           "winograd": copy.deepcopy(base)}
    print(f"torch {torch.__version__}, {arch} default mode fp32, batch {batch}, "
          f"{'channels_last' if fmt == torch.channels_last else 'NCHW'} 224x224; "
          f"WINOGRAD_DEFAULT_MIN_TILES {cpu.WINOGRAD_DEFAULT_MIN_TILES}")
    with torch.no_grad():
        describe_float64(fns, x, copy.deepcopy(tv).double()(x.double()))
        for _ in range(3):
            t, _ = time_interleaved(fns, x, 12 if batch == 1 else 5, {k: 1 for k in fns})
            r = {k: [a / b for a, b in zip(t[k], t["winograd"])] for k in ("stock", "torchvision")}
            print("  " + " ".join(f"{k} {1e3 * statistics.median(v):.1f}" for k, v in t.items()) + " ms | "
                  + " ".join(f"{k}/winograd {statistics.median(v):.3f} [{min(v):.2f}-{max(v):.2f}]"
                             for k, v in r.items()), flush=True)


if __name__ == "__main__":
    main()
