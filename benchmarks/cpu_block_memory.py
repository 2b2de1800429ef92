"""Blocks called on their own (torchvision's IntermediateLayerGetter over layer1-4, as its detection backbones
and feature extractors call a ResNet's body): torchvision against resnet_ext with and without the memory reuse
for such blocks (`engine.cpu.block_memory`; "without": its threshold set beyond any input), default mode, eval,
no_grad. Interleaved rounds in one process; per contender the median and torchvision / it per round.

    python benchmarks/cpu_block_memory.py ARCH BATCH SIZE ROUNDS
"""
import copy
import statistics
import sys

import torch
import torchvision
from torchvision.models._utils import IntermediateLayerGetter

import resnet_ext
from resnet_ext.cli import time_interleaved
from resnet_ext.engine import cpu


class _NoReuse(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        kept = cpu.BLOCK_REUSE_ELEMENTS
        cpu.BLOCK_REUSE_ELEMENTS = 1 << 62
        try:
            return self.m(x)
        finally:
            cpu.BLOCK_REUSE_ELEMENTS = kept


def main():
    torch.set_num_threads(2)
    arch, n, size, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    torch.manual_seed(0)
    tv = getattr(torchvision.models, arch)().eval()
    ours = resnet_ext.from_torchvision(copy.deepcopy(tv)).eval()
    layers = {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}
    g_tv, g_ours = IntermediateLayerGetter(tv, layers).eval(), IntermediateLayerGetter(ours, layers).eval()
    fns = {"tv": g_tv, "ours": g_ours, "ours without reuse": _NoReuse(g_ours)}
    x = torch.randn(n, 3, size, size)
    with torch.no_grad():
        ref = g_tv(x)
        for k, f in fns.items():
            assert all(torch.equal(a, b) for a, b in zip(f(x).values(), ref.values())), k
        times, _ = time_interleaved(fns, x, rounds, {k: 3 for k in fns})
    for k in fns:
        r = [a / b for a, b in zip(times["tv"], times[k])]
        print(f"{arch} b{n} {size}x{size} {k}: median {statistics.median(times[k]) * 1e3:.2f} ms, torchvision / it "
              f"{statistics.median(r):.3f} ({min(r):.2f}-{max(r):.2f})")


if __name__ == "__main__":
    main()
