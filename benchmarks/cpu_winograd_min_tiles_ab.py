"""The frozen mode's Winograd rule inside whole models (resnet_ext/engine/cpu.py: winograd_pays). bf16: its
WINOGRAD_MIN_TILES_BF16, every 3x3 as Winograd ("all": minimum 0, the rule before 08dc7e7) against the op only
from a minimum of 32 or 64 F(2x2) output tiles (N * ceil(H/2) * ceil(W/2)), and none at all. fp32: its
WINOGRAD_MIN_TILES, F(4x4) tiles (N * ceil(H/4) * ceil(W/4)), 16 (the rule) against 32 and 64, and none. Alone, one layer's call at a time (benchmarks/cpu_winograd.py), the op beats oneDNN at every resnet50
shape; in a forward each layer's weight comes cold from memory, and the op's transformed weight is 16/9 the
bytes. Interleaved rotated rounds, per-round ratios against the rule before (median, range).
Usage: python benchmarks/cpu_winograd_min_tiles_ab.py [ARCH] [BATCH] [cl|nchw] [bf16|fp32]   (2 threads; idle
machine)."""
import copy
import statistics
import sys

import torch
import torchvision

import resnet_ext
from resnet_ext.cli import time_interleaved
from resnet_ext.engine import cpu
from cpu_gemm_rule_ab import patched  # run as a script: benchmarks/ is on the path


def main() -> None:
    torch.set_num_threads(2)
    arch = sys.argv[1] if len(sys.argv) > 1 else "resnet50"
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    layout = sys.argv[3] if len(sys.argv) > 3 else "cl"
    fmt = torch.channels_last if layout == "cl" else torch.contiguous_format
    bf16 = (sys.argv[4] if len(sys.argv) > 4 else "bf16") == "bf16"
    tv = getattr(torchvision.models, arch)().eval()
    base = resnet_ext.from_torchvision(tv).eval().to(memory_format=fmt)
    resnet_ext.freeze(base, dtype=torch.bfloat16 if bf16 else None)
    x = torch.randn(batch, 3, 224, 224).contiguous(memory_format=fmt)
    name, first = ("WINOGRAD_MIN_TILES_BF16", ("all", 0)) if bf16 else ("WINOGRAD_MIN_TILES", ("min16", 16))
    fns = {k: patched(copy.deepcopy(base), cpu, name, t) for k, t in (first, ("min32", 32), ("min64", 64))}
    fns["none"] = patched(copy.deepcopy(base), cpu, "winograd_pays", lambda u, x: False)
    base_key = first[0]
    print(f"torch {torch.__version__}, {arch} frozen {'bf16' if bf16 else 'fp32'}, batch {batch}, {layout}")
    with torch.no_grad():
        ref = fns[base_key](x).float()
        for k, f in fns.items():
            resnet_ext.reset_path_counts()
            y = f(x).float()
            print(f"  {k}: winograd units {resnet_ext.path_counts().get('winograd', 0)}, "
                  f"max |diff| vs {base_key} / its max {((y - ref).abs().max() / ref.abs().max()).item():.1e}")
        for _ in range(3):
            t, _ = time_interleaved(fns, x, 20 if batch == 1 else 8, {k: 2 for k in fns})
            line = " ".join(f"{k} {1e3 * statistics.median(v):.1f}" for k, v in t.items())
            for k in fns:
                if k != base_key:
                    r = [a / b for a, b in zip(t[base_key], t[k])]
                    line += f" | {base_key}/{k} {statistics.median(r):.3f} [{min(r):.2f}-{max(r):.2f}]"
            print("ms " + line, flush=True)


if __name__ == "__main__":
    main()
