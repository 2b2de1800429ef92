"""Where a frozen CPU forward's time goes, against the machine's peak: each conv unit's time (torch.profiler, the
op's own event: oneDNN's convolution or resnet_ext's winograd3x3 / conv1x1 / conv_stem / conv_direct) and multiply-adds
(direct convolution's, so a Winograd unit can run above 100%), summed per kind of unit (stem, 1x1, 3x3 stride 1,
3x3 stride 2) and per op, with the max pool, the fc and the rest of the forward; GFLOP/s and the share of PEAK.
Usage: python benchmarks/cpu_roofline.py [ARCH] [BATCH] [cl|nchw] [bf16|fp32] [PEAK_GFLOPS]   (2 threads; idle
machine; PEAK: the machine's measured peak for the dtype on 2 threads, default 468 bf16 / 234 fp32, a 2-core Zen 5's
vdpbf16ps / FMA peak in benchmarks/results/2026-12-05-cpu-conv1x1/)."""
import collections
import sys
import time

import torch
import torchvision
from torch.profiler import ProfilerActivity, profile

import resnet_ext
from resnet_ext.engine import structure

CONV_OPS = ("mkldnn::_convolution_pointwise", "mkldnn::_convolution_pointwise_", "resnet_ext::winograd3x3",
            "resnet_ext::conv1x1", "resnet_ext::conv1x1_add_", "resnet_ext::conv_stem",
            "resnet_ext::conv_direct")
IN_PLACE_OPS = ("mkldnn::_convolution_pointwise_", "resnet_ext::conv1x1_add_")  # output first, input second
OTHER_OPS = {"resnet_ext::max_pool_nhwc": "max pool", "aten::addmm": "fc"}


def run_order(s):
    """The units in the order the flat forward calls them (engine/cpu.py: run)."""
    yield s.stem
    for head, ds, tail in s.blocks:
        yield from head
        if ds is not None:
            yield ds
        yield tail


def kind(u):
    c = u.conv
    if u.conv.in_channels <= 4:
        return "stem"
    return f"{c.kernel_size[0]}x{c.kernel_size[1]} stride {c.stride[0]}"


def main() -> None:
    torch.set_num_threads(2)
    arch = sys.argv[1] if len(sys.argv) > 1 else "resnet50"
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    layout = sys.argv[3] if len(sys.argv) > 3 else "cl"
    bf16 = (sys.argv[4] if len(sys.argv) > 4 else "bf16") == "bf16"
    peak = float(sys.argv[5]) if len(sys.argv) > 5 else (468.0 if bf16 else 234.0)
    model = resnet_ext.from_torchvision(getattr(torchvision.models, arch)().eval())
    resnet_ext.freeze(model, dtype=torch.bfloat16 if bf16 else None)
    x = torch.randn(batch, 3, 224, 224)
    if layout == "cl":
        x = x.contiguous(memory_format=torch.channels_last)
    units = list(run_order(structure.of(model, torch.float32, 3)))
    reps = 10 if batch == 1 else 3
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        t0 = time.perf_counter()
        for _ in range(reps):
            model(x)
        wall = (time.perf_counter() - t0) / reps
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(reps):
                model(x)
    events = sorted((e for e in prof.events() if e.name in CONV_OPS or e.name in OTHER_OPS),
                    key=lambda e: e.time_range.start)
    convs = [e for e in events if e.name in CONV_OPS]
    assert len(convs) == reps * len(units), (len(convs), len(units))
    per_kind = collections.defaultdict(lambda: [0.0, 0])  # kind: [us, MACs] per forward
    per_op = collections.defaultdict(lambda: [0.0, 0])
    for i, e in enumerate(convs):
        u = units[i % len(units)]
        n, c, h, w = e.input_shapes[1 if e.name in IN_PLACE_OPS else 0]
        cv = u.conv
        oh = (h + 2 * cv.padding[0] - cv.kernel_size[0]) // cv.stride[0] + 1
        ow = (w + 2 * cv.padding[1] - cv.kernel_size[1]) // cv.stride[1] + 1
        macs = n * cv.out_channels * oh * ow * c * cv.kernel_size[0] * cv.kernel_size[1] // cv.groups
        op = e.name.split("::")[1].rstrip("_") if e.name.startswith("mkldnn") else e.name.split("::")[1]
        for table, key in ((per_kind, kind(u)), (per_op, "oneDNN" if op == "_convolution_pointwise" else op)):
            table[key][0] += e.cpu_time_total / reps
            table[key][1] += macs // reps
    other = collections.defaultdict(float)
    for e in events:
        if e.name in OTHER_OPS:
            other[OTHER_OPS[e.name]] += e.cpu_time_total / reps
    print(f"torch {torch.__version__}, {arch} frozen {'bf16' if bf16 else 'fp32'}, batch {batch}, {layout}; "
          f"forward {wall * 1e3:.2f} ms (untraced); peak {peak:.0f} GFLOP/s")
    conv_us = sum(v[0] for v in per_kind.values())
    for title, table in (("kind of unit", per_kind), ("op", per_op)):
        print(f"  {title:<18} {'ms':>7} {'share':>6} {'GMAC':>7} {'GFLOP/s':>8} {'of peak':>8}")
        for k, (us, macs) in sorted(table.items(), key=lambda kv: -kv[1][0]):
            g = 2 * macs / us / 1e3
            print(f"  {k:<18} {us / 1e3:7.2f} {us / 1e3 / wall / 1e3:6.1%} {macs / 1e9:7.2f} {g:8.0f} "
                  f"{g / peak:8.0%}")
    macs = sum(v[1] for v in per_kind.values())
    print(f"  {'all convs':<18} {conv_us / 1e3:7.2f} {conv_us / 1e3 / wall / 1e3:6.1%} {macs / 1e9:7.2f} "
          f"{2 * macs / conv_us / 1e3:8.0f} {2 * macs / conv_us / 1e3 / peak:8.0%}")
    for k, us in other.items():
        print(f"  {k:<18} {us / 1e3:7.2f} {us / 1e3 / wall / 1e3:6.1%}")
    rest = wall * 1e6 - conv_us - sum(other.values())
    print(f"  {'rest':<18} {rest / 1e3:7.2f} {rest / 1e3 / wall / 1e3:6.1%}   (input cast and checks, pooling, "
          f"copies, Python; the profiler's own cost)")
    print(f"  the convs' multiply-adds at the peak: {2 * macs / peak / 1e6:.2f} ms")


if __name__ == "__main__":
    main()
