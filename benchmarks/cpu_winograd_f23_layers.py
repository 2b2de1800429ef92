"""Per layer, fp32 F(2x2, 3x3) against F(4x4, 3x3) inside the frozen forward: each stride-1 3x3 unit's own profiled
time (torch.profiler, as benchmarks/cpu_roofline.py) in two frozen copies, one planned with F(4x4) only and one with
F(2x2) for every Winograd unit (engine/cpu.py: WINOGRAD_F23_MAX_EXTRA), profiled in alternating rounds; medians
over the rounds, and each layer's 16 * tiles(2) - 36 * tiles(4) (winograd_tile's measure). A layer that is no
Winograd unit in either (too few tiles: winograd_pays) is marked: the two times are the same op's, its noise.
Usage: python benchmarks/cpu_winograd_f23_layers.py [ARCH] [BATCH] [ROUNDS]   (2 threads, channels_last, 224x224)."""
import copy
import statistics
import sys

import torch
import torchvision

import resnet_ext
from resnet_ext.engine import cpu, structure
from cpu_ov_layers import ours_per_unit  # run as a script: benchmarks/ is on the path
from cpu_roofline import run_order


def main() -> None:
    torch.set_num_threads(2)
    arch = sys.argv[1] if len(sys.argv) > 1 else "resnet50"
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    base = resnet_ext.freeze(resnet_ext.from_torchvision(getattr(torchvision.models, arch)().eval()))
    x = torch.randn(batch, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    units = list(run_order(structure.of(base, torch.float32, 3)))
    names = {m: n for n, m in base.named_modules()}
    models, saved = {}, cpu.WINOGRAD_F23_MAX_EXTRA
    with torch.inference_mode():
        for k, v in {"f43": -1 << 40, "f23": 1 << 40}.items():
            models[k] = copy.deepcopy(base)
            cpu.WINOGRAD_F23_MAX_EXTRA = v
            try:
                models[k](x)  # plans with this rule
            finally:
                cpu.WINOGRAD_F23_MAX_EXTRA = saved
        res = {k: [] for k in models}
        for _ in range(rounds):
            for k, m in models.items():
                res[k].append(ours_per_unit(m, x, units, 5 if batch == 1 else 2))
    print(f"torch {torch.__version__}, {arch} frozen fp32, batch {batch}, channels_last 224x224; us per call, "
          f"medians of {rounds} rounds")
    print(f"{'unit':<22} {'C':>5} {'extra':>6} {'F(4x4)':>8} {'F(2x2)':>8} {'F(4x4)/F(2x2)':>14}")
    for i, u in enumerate(units):
        if u.conv.kernel_size != (3, 3) or u.conv.stride != (1, 1):
            continue
        a, b = (statistics.median(r[0][i] for r in res[k]) for k in ("f43", "f23"))
        ops_ = {k: res[k][0][1][i] for k in res}
        side = x.shape[2] // (4 << (int(names[u.conv][5]) - 1))  # layerN's stride-1 maps: 224 / 4 / 2^(N-1)
        t = torch.empty(batch, 1, side, side)
        extra = 16 * cpu._tiles(t, 2) - 36 * cpu._tiles(t, 4)
        note = "" if set(ops_.values()) == {"winograd3x3"} else f"  ({ops_['f43']} / {ops_['f23']}: the same op)"
        print(f"{names[u.conv]:<22} {u.conv.in_channels:5d} {extra:6d} {a:8.0f} {b:8.0f} {a / b:14.2f}{note}")


if __name__ == "__main__":
    main()
