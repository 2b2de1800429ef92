"""The CPU default mode's choice of 1x1 GEMM units (`engine.cpu.gemm_pays`, "new") against the rule before
2026-12-04 ("old": input channels at least twice the output pixels, for fp32 and bf16 alike), optionally against
every 1x1 conv as a GEMM ("all", bf16 only, `--all`), and against torchvision, on whole models with a channels_last
model and input, interleaved rounds in one process (rotated); ratios per round, median (range).
Usage: python benchmarks/cpu_gemm_rule_ab.py [--all]   (2 threads)."""
import statistics
import sys

import torch
import torchvision

import resnet_ext
from resnet_ext.cli import time_interleaved
from resnet_ext.engine import cpu

NEW = cpu.gemm_pays


def old_rule(u, x):
    conv = u.conv
    if (conv.kernel_size != (1, 1) or conv.groups != 1 or conv.padding != (0, 0) or conv.bias is not None
            or not resnet_ext.ops.wants_channels_last(x)):
        return False
    pixels = x.shape[0] * (-(-x.shape[2] // conv.stride[0])) * (-(-x.shape[3] // conv.stride[1]))
    return conv.in_channels >= 2 * pixels


def all_rule(u, x):
    conv = u.conv
    return (conv.kernel_size == (1, 1) and conv.groups == 1 and conv.padding == (0, 0) and conv.bias is None
            and resnet_ext.ops.wants_channels_last(x))


def patched(model, module, name: str, value):
    """model(x) with `module.name` set to `value` for the call (a contender with another rule), then restored."""
    def f(x):
        saved = getattr(module, name)
        setattr(module, name, value)
        try:
            return model(x)
        finally:
            setattr(module, name, saved)
    return f


def frozen_setup(argv):
    """A frozen-mode A/B's setup from its arguments [ARCH] [BATCH] [cl|nchw] [bf16|fp32] [SIZE] (resnet50, 1, cl,
    bf16, 224): (title, torchvision's ARCH converted and frozen in the layout and dtype, an input of SIZE)."""
    arch = argv[1] if len(argv) > 1 else "resnet50"
    batch = int(argv[2]) if len(argv) > 2 else 1
    layout = argv[3] if len(argv) > 3 else "cl"
    fmt = torch.channels_last if layout == "cl" else torch.contiguous_format
    bf16 = (argv[4] if len(argv) > 4 else "bf16") == "bf16"
    size = int(argv[5]) if len(argv) > 5 else 224
    base = resnet_ext.from_torchvision(getattr(torchvision.models, arch)().eval()).eval().to(memory_format=fmt)
    resnet_ext.freeze(base, dtype=torch.bfloat16 if bf16 else None)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
    title = f"{arch} frozen {'bf16' if bf16 else 'fp32'}, batch {batch}, {layout}, {size}x{size}"
    return title, base, x


def describe(fns: dict, x, ref: str, path: str) -> None:
    """Prints each contender's units on `path` (path_counts) and its logits' max difference from contender `ref`'s,
    relative to their largest."""
    with torch.no_grad():
        base = fns[ref](x).float()
        for k, f in fns.items():
            resnet_ext.reset_path_counts()
            y = f(x).float()
            print(f"  {k}: {path} units {resnet_ext.path_counts().get(path, 0)}, "
                  f"max |diff| vs {ref} / its max {((y - base).abs().max() / base.abs().max()).item():.1e}")


def describe_float64(fns: dict, x, ref64) -> None:
    """Prints each contender's unit kinds (path_counts of its second call: the first may plan) and its logits' max
    difference from the float64 reference `ref64`, relative to its largest."""
    with torch.no_grad():
        for k, f in fns.items():
            f(x)
            resnet_ext.reset_path_counts()
            y = f(x).double()
            kinds = {p: n for p, n in resnet_ext.path_counts().items() if p != "flat_forwards"}
            print(f"  {k}: {kinds}, max |y - float64| / max |float64| "
                  f"{((y - ref64).abs().max() / ref64.abs().max()).item():.1e}")


def with_rule(model, rule):
    return patched(model, cpu, "gemm_pays", rule)


def time_with_units(fns: dict, x, rounds: int):
    """Interleaved times per contender (`time_interleaved`, 2 warm-up calls each) and each one's GEMM unit count."""
    with torch.no_grad():
        t, _ = time_interleaved(fns, x, rounds, {name: 2 for name in fns})
        units = {}
        for name in fns:
            resnet_ext.reset_path_counts()
            fns[name](x)
            units[name] = resnet_ext.path_counts().get("gemm", 0)
    return t, units


def ratio_text(t: dict, a: str, b: str) -> str:
    """a / b per round: median (range)."""
    r = [p / q for p, q in zip(t[a], t[b])]
    return f"{statistics.median(r):.3f} ({min(r):.2f}-{max(r):.2f})"


def frozen_rounds(fns: dict, x, ref: str, settle: int = 0, runs: int = 3) -> None:
    """`runs` interleaved runs of the frozen-mode A/Bs (20 rounds at batch 1's size, else 8; 2 warm-up calls each),
    each printed as every contender's median ms and `ref` / each other contender per round (`ratio_text`)."""
    with torch.no_grad():
        for _ in range(runs):
            t, _ = time_interleaved(fns, x, 20 if x.numel() <= 3 * 224 * 224 else 8, {k: 2 for k in fns},
                                    settle=settle)
            print(" ".join(f"{k} {1e3 * statistics.median(v):.1f}" for k, v in t.items()) + " ms | "
                  + " ".join(f"{ref}/{k} {ratio_text(t, ref, k)}" for k in fns if k != ref), flush=True)


def main() -> None:
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, AMX_BF16 {cpu.AMX_BF16}")
    for arch in ("resnet18", "resnet50", "resnet101"):
        for dtype in (torch.float32, torch.bfloat16):
            tv = getattr(torchvision.models, arch)().eval()
            models = {"tv": tv}
            for name in ("new", "old") + (("all",) if dtype == torch.bfloat16 and "--all" in sys.argv else ()):
                models[name] = getattr(resnet_ext, arch)().eval()
                models[name].load_state_dict(tv.state_dict())
            for m in models.values():
                m.to(dtype=dtype, memory_format=torch.channels_last)
            rules = {"new": NEW, "old": old_rule, "all": all_rule}
            fns = {name: m if name == "tv" else with_rule(m, rules[name]) for name, m in models.items()}
            for bs, size in ((1, 32), (1, 64), (1, 112), (1, 160), (1, 224), (2, 224), (8, 224)):
                x = torch.randn(bs, 3, size, size, dtype=dtype).contiguous(memory_format=torch.channels_last)
                rounds = 30 if size < 224 else (9 if bs == 1 else 5)
                t, units = time_with_units(fns, x, rounds)

                def ratio(a, b):
                    return ratio_text(t, a, b)
                others = [n for n in fns if n not in ("tv", "new")]
                print(f"{arch} {str(dtype)[6:]} batch {bs} {size}x{size}: gemm units "
                      + " ".join(f"{n} {units[n]}" for n in fns if n != "tv") + "; ms "
                      + " ".join(f"{n} {statistics.median(t[n]) * 1e3:.2f}" for n in fns) + "; "
                      + ", ".join(f"{n}/new {ratio(n, 'new')}" for n in others)
                      + f", tv/new {ratio('tv', 'new')}", flush=True)


if __name__ == "__main__":
    main()
