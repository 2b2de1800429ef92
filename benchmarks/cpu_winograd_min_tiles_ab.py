"""The frozen bf16 mode's Winograd rule inside whole models (resnet_ext/engine/cpu.py: winograd_pays, its
WINOGRAD_MIN_TILES_BF16): every bf16 3x3 as Winograd ("all": minimum 0, the rule before), against the op only from
a minimum of 32 or 64 F(2x2) output tiles (N * ceil(H/2) * ceil(W/2)), and none at all. Alone, one layer's call at a time (benchmarks/cpu_winograd.py), the op beats oneDNN at every resnet50
shape; in a forward each layer's weight comes cold from memory, and the op's transformed weight is 16/9 the
bytes. Interleaved rotated rounds, per-round ratios against the rule before (median, range).
Usage: python benchmarks/cpu_winograd_min_tiles_ab.py [ARCH] [BATCH] [LAYOUT]   (2 threads; idle machine)."""
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
    tv = getattr(torchvision.models, arch)().eval()
    base = resnet_ext.from_torchvision(tv).eval().to(memory_format=fmt)
    resnet_ext.freeze(base, dtype=torch.bfloat16)
    x = torch.randn(batch, 3, 224, 224).contiguous(memory_format=fmt)
    fns = {k: patched(copy.deepcopy(base), cpu, "WINOGRAD_MIN_TILES_BF16", t)
           for k, t in (("all", 0), ("min32", 32), ("min64", 64))}
    fns["none"] = patched(copy.deepcopy(base), cpu, "winograd_pays", lambda u, x: False)
    print(f"torch {torch.__version__}, {arch} frozen bf16, batch {batch}, {layout}")
    with torch.no_grad():
        ref = fns["all"](x).float()
        for k, f in fns.items():
            resnet_ext.reset_path_counts()
            y = f(x).float()
            print(f"  {k}: winograd units {resnet_ext.path_counts().get('winograd', 0)}, "
                  f"max |diff| vs all / max |all| {((y - ref).abs().max() / ref.abs().max()).item():.1e}")
        for _ in range(3):
            t, _ = time_interleaved(fns, x, 20 if batch == 1 else 8, {k: 2 for k in fns})
            line = " ".join(f"{k} {1e3 * statistics.median(v):.1f}" for k, v in t.items())
            for k in fns:
                if k != "all":
                    r = [a / b for a, b in zip(t["all"], t[k])]
                    line += f" | all/{k} {statistics.median(r):.3f} [{min(r):.2f}-{max(r):.2f}]"
            print("ms " + line, flush=True)


if __name__ == "__main__":
    main()
