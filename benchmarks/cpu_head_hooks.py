"""A feature extractor's hook on the average pool (it keeps the pooled embedding): torchvision against resnet_ext
default and frozen, each without hooks, with the hook (the flat forward since 2026-12-06: the head runs through its
modules) and with the hook plus a no-op hook on layer4 (the module path, where the pool's hook alone sent the
model before). Interleaved rounds in one process; per contender the median and torchvision / it per round.

    python benchmarks/cpu_head_hooks.py ARCH BATCH nchw|cl ROUNDS
"""
import copy
import statistics
import sys

import torch
import torchvision

import resnet_ext
from resnet_ext.cli import time_interleaved


def main():
    torch.set_num_threads(2)
    arch, n, layout, rounds = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    torch.manual_seed(0)
    tv = getattr(torchvision.models, arch)().eval()
    kept = {}

    def keep(name):
        return lambda m, a, out: kept.__setitem__(name, out)

    fns = {"tv": tv}
    tv.avgpool.register_forward_hook(keep("tv"))
    for mode in ("default", "frozen"):
        for hooks in ("", "+pool hook", "+pool hook+layer4 hook"):
            m = resnet_ext.from_torchvision(copy.deepcopy(tv)).eval()
            m.avgpool._forward_hooks.clear()
            if mode == "frozen":
                resnet_ext.freeze(m)
            if hooks:
                m.avgpool.register_forward_hook(keep(mode + hooks))
            if "layer4" in hooks:
                m.layer4.register_forward_hook(lambda *a: None)
            fns[mode + hooks] = m
    x = torch.randn(n, 3, 224, 224)
    if layout == "cl":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = tv(x)
        for k, m in fns.items():
            resnet_ext.reset_path_counts()
            err = float((m(x) - ref).abs().max() / ref.abs().max())
            flat = resnet_ext.path_counts().get("flat_forwards", 0)
            print(f"{k}: rel err {err:.2e}, flat forward {bool(flat)}" + (
                f", pooled rel err {float((kept[k] - kept['tv']).abs().max() / kept['tv'].abs().max()):.2e}"
                if k in kept and k != "tv" else ""))
        times, _ = time_interleaved(fns, x, rounds, {k: 3 for k in fns})
    for k in fns:
        r = [a / b for a, b in zip(times["tv"], times[k])]
        print(f"{arch} b{n} {layout} {k}: median {statistics.median(times[k]) * 1e3:.1f} ms, torchvision / it "
              f"{statistics.median(r):.3f} ({min(r):.2f}-{max(r):.2f})")


if __name__ == "__main__":
    main()
