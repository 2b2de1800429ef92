"""A model with a hook in its body (the module path) on NCHW input: torchvision against resnet_ext's default and
frozen modes with a no-op forward hook on layer4. Two deep copies per contender (where a model's tensors lie moves
these small forwards by 2-4%), interleaved rounds in one process; per contender the median of its copies' per-round
torchvision / it ratios (torchvision: the mean of its two copies per round), and the path counts.

    python benchmarks/cpu_hooked_nchw.py ARCH BATCH SIZE ROUNDS
"""
import copy
import statistics
import sys

import torch
import torchvision

import resnet_ext
from resnet_ext.cli import ratio, time_interleaved


def main():
    torch.set_num_threads(2)
    arch, n, size, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    torch.manual_seed(0)
    tv = getattr(torchvision.models, arch)(num_classes=10).eval()
    fns = {}
    for copy_ in ("a", "b"):
        fns["tv " + copy_] = copy.deepcopy(tv)
        for mode in ("default", "frozen"):
            m = resnet_ext.from_torchvision(copy.deepcopy(tv)).eval()
            if mode == "frozen":
                resnet_ext.freeze(m)
            m.layer4.register_forward_hook(lambda *a: None)
            fns[f"{mode}+hook {copy_}"] = m
    x = torch.randn(n, 3, size, size)
    with torch.no_grad():
        ref = tv(x)
        for k in ("default+hook a", "frozen+hook a"):
            resnet_ext.reset_path_counts()
            err = float((fns[k](x) - ref).abs().max() / ref.abs().max())
            print(f"{k}: rel err {err:.2e}, paths {resnet_ext.path_counts()}")
        times, _ = time_interleaved(fns, x, rounds, {k: 3 for k in fns})
    tv_round = [(a + b) / 2 for a, b in zip(times["tv a"], times["tv b"])]
    for mode in ("tv", "default+hook", "frozen+hook"):
        both = times[mode + " a"] + times[mode + " b"]
        r = ratio(tv_round * 2, both)
        print(f"{arch} b{n} {size}x{size} {mode}: median {statistics.median(both) * 1e3:.2f} ms, torchvision / it "
              f"{r['median']:.3f} ({r['min']:.2f}-{r['max']:.2f})")


if __name__ == "__main__":
    main()
