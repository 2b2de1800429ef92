"""The default mode's NCHW units (engine/cpu.py: nchw_unit_pays, nchw_unit) inside whole models whose weights are
as constructed (NCHW), in channels_last forwards (a channels_last input, or an NCHW one of cpu.CL_PIXELS or more
pixels, or any NCHW input with "cl_inside": CL_PIXELS 0), against torchvision and against the code without them
("before": NCHW_UNIT_WEIGHT_RATIO infinite). Deep copies of one model, interleaved rotated
rounds, each timed call right after an untimed one of its own; per-round ratios torchvision / contender (median,
range), each contender's unit kinds and the logits' distance from float64 first.
Usage: python benchmarks/cpu_nchw_units_ab.py [ARCH] [BATCH] [SIZE] [nchw|cl] [cl_inside]   (2 threads; idle
machine). The runs in results/2026-12-05-cpu-nchw-units/ whose header names CL_MIN_SIDE or "before 150000" ran an
earlier version with a third contender and channels_last inside by another rule (see the README there)."""
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
    size = int(sys.argv[3]) if len(sys.argv) > 3 else 224
    layout = sys.argv[4] if len(sys.argv) > 4 else "nchw"
    cl_inside = len(sys.argv) > 5 and sys.argv[5] == "cl_inside"
    tv = getattr(torchvision.models, arch)().eval()
    base = resnet_ext.from_torchvision(copy.deepcopy(tv)).eval()
    x = torch.randn(batch, 3, size, size)
    if layout == "cl":
        x = x.contiguous(memory_format=torch.channels_last)

    def inside(model):  # CL_PIXELS 0 for "cl_inside": every NCHW input channels_last inside
        return patched(model, cpu, "CL_PIXELS", 0) if cl_inside else model
    fns = {"torchvision": tv,
           "before": inside(patched(copy.deepcopy(base), cpu, "NCHW_UNIT_WEIGHT_RATIO", float("inf"))),
           "now": inside(copy.deepcopy(base))}
    print(f"torch {torch.__version__}, {arch} default mode fp32, NCHW weights, batch {batch}, {layout} input "
          f"{size}x{size}; NCHW_UNIT_WEIGHT_RATIO {cpu.NCHW_UNIT_WEIGHT_RATIO}, NCHW_UNIT_GEMM_PIXELS "
          f"{cpu.NCHW_UNIT_GEMM_PIXELS}, CL_PIXELS {0 if cl_inside else cpu.CL_PIXELS}")
    with torch.no_grad():
        describe_float64(fns, x, copy.deepcopy(tv).double()(x.double()))
        for _ in range(3):
            t, _ = time_interleaved(fns, x, 10 if batch * size * size <= 2 * 224 * 224 else 5,
                                    {k: 1 for k in fns}, settle=1)
            r = {k: [a / b for a, b in zip(t["torchvision"], t[k])] for k in fns if k != "torchvision"}
            print("  " + " ".join(f"{k} {1e3 * statistics.median(v):.1f}" for k, v in t.items()) + " ms | "
                  + " ".join(f"tv/{k} {statistics.median(v):.3f} [{min(v):.2f}-{max(v):.2f}]"
                             for k, v in r.items()), flush=True)


if __name__ == "__main__":
    main()
