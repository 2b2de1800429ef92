"""Frozen resnet50 fp32 on this CPU: Winograd on vs off (oneDNN direct), interleaved rounds, per-round ratios.
Usage: PYTHONPATH=. python benchmarks/cpu_winograd_onoff_ab.py"""
import copy
import statistics
import time

import torch
import torchvision

import resnet_ext

torch.manual_seed(0)
tv = torchvision.models.resnet50().eval()
on = resnet_ext.freeze(resnet_ext.from_torchvision(copy.deepcopy(tv)))
off = resnet_ext.freeze(resnet_ext.from_torchvision(copy.deepcopy(tv)))
for b in (1, 8):
    x = torch.randn(b, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    t = {"on": [], "off": []}
    with torch.no_grad():
        for r in range(7 if b == 1 else 5):
            for name, m in ((("on", on), ("off", off)) if r % 2 == 0 else (("off", off), ("on", on))):
                resnet_ext.cpu_winograd(name == "on")
                m(x)
                s = time.perf_counter()
                m(x)
                t[name].append(time.perf_counter() - s)
        resnet_ext.cpu_winograd(True)
        resnet_ext.reset_path_counts()
        on(x)
        print(resnet_ext.path_counts())
    ratios = [b_ / a for a, b_ in zip(t["on"], t["off"])]
    print(f"batch {b}: on {statistics.median(t['on'])*1e3:.1f} ms, off {statistics.median(t['off'])*1e3:.1f} ms, "
          f"off/on per round median {statistics.median(ratios):.3f} ({min(ratios):.2f}-{max(ratios):.2f})")
