"""Two versions of the CPU GEMM ops (csrc/ops/winograd.cpp and conv1x1.cpp) timed against each other in one process:
each version's sources (a git revision, or `work` for the working tree) are built with torch's cpp_extension under
their own op namespace (resnet_ext_a, resnet_ext_b), then every case runs on both, interleaved round by round
(A B, B A, ...), after checking that the two give the same bits. One process: the host's drift moves both alike,
where separate processes per build moved whole-forward ratios by 0.85-1.19 in one hour.
Usage: python benchmarks/cpu_ops_ab.py REV_A REV_B [ROUNDS] [FILTER]   (e.g. HEAD work 7 "n1"; 2 threads; idle)"""
import os
import statistics
import subprocess
import sys
import tempfile

import torch
import torch.utils.cpp_extension
from torch.utils import benchmark

from resnet_ext import ops  # the weight packers (and, imported, the package's own ops to time against)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = ("winograd.cpp", "winograd_f23.inc", "conv1x1.cpp", "cpu_gemm.h", "cpu_clones.h", "avx512_lanes.h")


def build(rev: str, ns: str, tmp: str):
    """csrc/ops' GEMM ops at `rev` as torch.ops.resnet_ext_<ns>."""
    src = os.path.join(tmp, ns)
    os.makedirs(os.path.join(src, "build"))
    for f in FILES:
        path = os.path.join("csrc", "ops", f)
        if rev == "work":
            text = open(os.path.join(ROOT, path)).read()
        else:
            text = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, check=True, capture_output=True,
                                  text=True).stdout
        for macro in ("TORCH_LIBRARY_FRAGMENT", "TORCH_LIBRARY_IMPL"):
            text = text.replace(f"{macro}(resnet_ext,", f"{macro}(resnet_ext_{ns},")
        open(os.path.join(src, f), "w").write(text)
    torch.utils.cpp_extension.load(
        name=f"cpu_ops_{ns}", sources=[os.path.join(src, "winograd.cpp"), os.path.join(src, "conv1x1.cpp")],
        extra_cflags=["-O3", "-fopenmp"], build_directory=os.path.join(src, "build"), is_python_module=False)
    return getattr(torch.ops, f"resnet_ext_{ns}")


def cases():
    """(name, fn(ops namespace)): resnet50's Winograd shapes at batch 1 and 8, and its 7x7 layer-4 units at batch 1."""
    g = torch.Generator().manual_seed(0)
    for dt in (torch.bfloat16, torch.float32):
        name = str(dt).split(".")[1]
        for n in (1, 8):
            for c, h in ((64, 56), (128, 28), (256, 14)):
                m = 2 if dt == torch.bfloat16 or (n == 1 and c == 256) else 4  # the plan's tile (winograd_tile)
                x = torch.randn(n, c, h, h, generator=g).contiguous(memory_format=torch.channels_last).to(dt)
                u = ops.winograd_weight((torch.randn(c, c, 3, 3, generator=g) * 0.05).to(dt), m)
                b = torch.randn(c, generator=g)
                yield f"winograd3x3 {name} n{n} {c}x{h}x{h} m{m}", \
                    lambda L, x=x, u=u, b=b: L.winograd3x3(x, u, b, None, True)
        for c, k, kk in ((2048, 512, 1), (512, 2048, 1), (512, 512, 3)):
            x = torch.randn(1, c, 7, 7, generator=g).contiguous(memory_format=torch.channels_last).to(dt)
            w = (torch.randn(k, c, kk, kk, generator=g) * 0.02).to(dt)
            b = torch.randn(k, generator=g)
            if kk == 1:
                wp = ops.conv1x1_weight(w)
                yield f"conv1x1 {name} n1 {c}->{k} 7x7", lambda L, x=x, wp=wp, b=b: L.conv1x1(x, wp, b, None, True)
            elif dt == torch.bfloat16:  # the plan's layer-4 3x3 (fp32 stays on oneDNN)
                wp = ops.conv_direct_weight(w)
                yield f"conv_direct {name} n1 {c}->{k} 3x3 7x7", \
                    lambda L, x=x, wp=wp, b=b: L.conv_direct(x, wp, b, True, [3, 3], [1, 1], [1, 1])


def main() -> None:
    rev_a, rev_b = sys.argv[1], sys.argv[2]
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    only = sys.argv[4] if len(sys.argv) > 4 else ""
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        a, b = build(rev_a, "a", tmp), build(rev_b, "b", tmp)
        print(f"torch {torch.__version__}, 2 threads; A = {rev_a}, B = {rev_b}; {rounds} interleaved rounds, "
              f"medians of torch.utils.benchmark's blocked_autorange (0.3 s)")
        for name, f in cases():
            if only not in name:
                continue
            same = torch.equal(f(a), f(b))
            ta, tb = [], []
            for r in range(rounds):
                for lib, acc in ((a, ta), (b, tb)) if r % 2 == 0 else ((b, tb), (a, ta)):
                    timer = benchmark.Timer("f(lib)", globals=dict(f=f, lib=lib), num_threads=2)
                    acc.append(timer.blocked_autorange(min_run_time=0.3).median)
            rs = sorted(y / x for x, y in zip(ta, tb))
            print(f"{name:36s} A {statistics.median(ta) * 1e6:7.0f} us  B {statistics.median(tb) * 1e6:7.0f} us  "
                  f"B/A {statistics.median(rs):.3f} ({rs[0]:.3f}-{rs[-1]:.3f}){'' if same else '  OUTPUTS DIFFER'}",
                  flush=True)


if __name__ == "__main__":
    main()
