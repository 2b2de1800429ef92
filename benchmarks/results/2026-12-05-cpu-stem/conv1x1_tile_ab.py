# The conv1x1 op at b517ab5 (/tmp/w/old: csrc/ops/conv1x1.cpp and cpu_gemm.h of that commit, op namespace renamed
# resnet_ext_old) against this tree's (/tmp/w/new, renamed resnet_ext_new), both built by torch.utils.cpp_extension.load
# with the same flags; resnet50's 1x1 shapes at batch 1, 2 threads, 30 alternating rounds of 5 calls; medians.
import torch, statistics, time
from torch.utils.cpp_extension import load
load(name="c1old", sources=["/tmp/w/old/conv1x1_old.cpp"], extra_cflags=["-O3", "-fopenmp", "-std=c++20"], extra_ldflags=["-fopenmp"], build_directory="/tmp/w/old", is_python_module=False)
from resnet_ext import ops
from resnet_ext.engine import cpu
torch.set_num_threads(2)
load(name="c1new", sources=["/tmp/w/new/conv1x1_new.cpp"], extra_cflags=["-O3", "-fopenmp", "-std=c++20"], extra_ldflags=["-fopenmp"], build_directory="/tmp/w/new", is_python_module=False)
new, old = torch.ops.resnet_ext_new.conv1x1, torch.ops.resnet_ext_old.conv1x1
SH = [(64,56,64,1),(64,56,256,1),(256,56,64,1),(256,56,128,1),(256,56,512,2),(128,28,512,1),(512,28,128,1),(512,28,1024,2),(256,14,1024,1),(1024,14,256,1),(1024,14,2048,2),(512,7,2048,1),(2048,7,512,1)]
for dt in (torch.bfloat16, torch.float32):
    tot = {"old": 0, "new": 0}
    for c, h, k, s in SH:
        x = torch.randn(1, c, h, h).to(dt).contiguous(memory_format=torch.channels_last)
        w = ops.conv1x1_weight(torch.randn(k, c, 1, 1).to(dt)); b = torch.randn(k)
        ho = (h - 1) // s + 1
        r = torch.randn(1, k, ho, ho).to(dt).contiguous(memory_format=torch.channels_last) if s == 1 and k > c else None
        res = {"old": [], "new": []}
        with torch.inference_mode(), cpu.reused_memory():
            assert torch.equal(old(x, w, b, r, True, s), new(x, w, b, r, True, s))
            for rep in range(30):
                for name, f in (("old", old), ("new", new)) if rep % 2 else (("new", new), ("old", old)):
                    t0 = time.perf_counter()
                    for _ in range(5): f(x, w, b, r, True, s)
                    res[name].append((time.perf_counter() - t0) / 5)
        mo, mn = statistics.median(res["old"]), statistics.median(res["new"])
        tot["old"] += mo; tot["new"] += mn
        print(str(dt)[6:], (c, h, k, s), f"old {mo*1e6:.0f} us new {mn*1e6:.0f} us old/new {mo/mn:.3f}")
    print(str(dt)[6:], "sum old/new", f"{tot['old']/tot['new']:.3f}")
