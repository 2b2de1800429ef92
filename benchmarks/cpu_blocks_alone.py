"""Blocks called on their own (torchvision's IntermediateLayerGetter over layer1-4, as its detection backbones
and feature extractors call a ResNet's body): torchvision against resnet_ext's blocks, which run torchvision's
code there (`engine.enabled`: "stock_blocks"), and against the same blocks forced through the engine's units (as
a model's module path runs them, outside its memory reuse), default mode, eval, no_grad, outputs checked equal
bitwise. Interleaved rounds in one process; per contender the median and torchvision / it per round.

    python benchmarks/cpu_blocks_alone.py ARCH BATCH SIZE ROUNDS
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


class _Units(torch.nn.Module):
    """The wrapped module's blocks through the engine's units: as if a model's forward were under way."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        token = cpu._IN_MODEL.set(True)
        try:
            return self.m(x)
        finally:
            cpu._IN_MODEL.reset(token)


def main():
    torch.set_num_threads(2)
    arch, n, size, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    torch.manual_seed(0)
    tv = getattr(torchvision.models, arch)().eval()
    ours = resnet_ext.from_torchvision(copy.deepcopy(tv)).eval()
    layers = {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}
    g_tv, g_ours = IntermediateLayerGetter(tv, layers).eval(), IntermediateLayerGetter(ours, layers).eval()
    fns = {"tv": g_tv, "ours": g_ours, "ours through the units": _Units(g_ours)}
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
