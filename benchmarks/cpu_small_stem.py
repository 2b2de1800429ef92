"""The small-image variant of torchvision's ResNets (CIFAR-style: a 3x3 stride-1 stem conv, the max pool replaced by
nn.Identity): torchvision against resnet_ext's default and frozen modes, interleaved rounds in one process; per
contender the median and torchvision / it per round, and which path ran.

    python benchmarks/cpu_small_stem.py ARCH BATCH SIZE ROUNDS
"""
import copy
import statistics
import sys

import torch
import torchvision
from torch import nn

import resnet_ext
from resnet_ext.cli import ratio, time_interleaved


def main():
    torch.set_num_threads(2)
    arch, n, size, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    torch.manual_seed(0)
    tv = getattr(torchvision.models, arch)(num_classes=10)
    tv.conv1, tv.maxpool = nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.Identity()
    tv.eval()
    fns = {"tv": tv}
    for mode in ("default", "frozen"):
        m = resnet_ext.from_torchvision(copy.deepcopy(tv)).eval()
        if mode == "frozen":
            resnet_ext.freeze(m)
        fns[mode] = m
    x = torch.randn(n, 3, size, size)
    with torch.no_grad():
        ref = tv(x)
        for k, m in fns.items():
            resnet_ext.reset_path_counts()
            err = float((m(x) - ref).abs().max() / ref.abs().max())
            print(f"{k}: rel err {err:.2e}, paths {resnet_ext.path_counts()}")
        times, _ = time_interleaved(fns, x, rounds, {k: 3 for k in fns})
    for k in fns:
        r = ratio(times["tv"], times[k])
        print(f"{arch} b{n} {size}x{size} {k}: median {statistics.median(times[k]) * 1e3:.2f} ms, torchvision / it "
              f"{r['median']:.3f} ({r['min']:.2f}-{r['max']:.2f})")


if __name__ == "__main__":
    main()
