"""One process per call: import time, model build, first and second forward (ms) of torchvision vs resnet_ext's
default mode. Usage: python benchmarks/cpu_first_call.py {tv,ours} ARCH BATCH LAYOUT"""
import sys, time
t0 = time.perf_counter()
import torch, torchvision
t1 = time.perf_counter()
which, arch, n, layout = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
if which == "ours":
    import resnet_ext
    build = getattr(resnet_ext, arch)
else:
    build = getattr(torchvision.models, arch)
t2 = time.perf_counter()
torch.set_num_threads(2)
torch.manual_seed(0)
m = build().eval()
x = torch.randn(n, 3, 224, 224)
if layout == "cl":
    x = x.contiguous(memory_format=torch.channels_last)
t3 = time.perf_counter()
with torch.no_grad():
    a = time.perf_counter(); m(x); b = time.perf_counter(); m(x); c = time.perf_counter(); m(x); d = time.perf_counter()
print(f"{which} torch+tv import {1e3*(t1-t0):.0f} ext import {1e3*(t2-t1):.0f} build {1e3*(t3-t2):.0f} "
      f"first {1e3*(b-a):.1f} second {1e3*(c-b):.1f} third {1e3*(d-c):.1f}")
