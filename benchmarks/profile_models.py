"""Where a resnet50 eval forward and an AMP training step spend their GPU time (torch.profiler, CUDA kernels).

For resnet_ext (default mode) and torchvision eager, channels_last, at one batch size and dtype: the top kernels by
total CUDA time (name, calls per iteration, ms per iteration, share), the kernel time by category (conv by
library, maxpool, BN, elementwise, copies/format conversions, GEMM, ...), and the eval forward's time by stage
(stem conv unit, maxpool, layer1-4, head), each stage timed alone with CUDA events.

    python benchmarks/profile_models.py [--batch 256] [--dtype bf16] [--top 25] [--md FILE] [--json FILE]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from resnet_ext import engine  # noqa: E402
from resnet_ext.engine import units  # noqa: E402
from resnet_ext.bench import seeded_model  # noqa: E402
from resnet_ext.cli import cuda_event_ms  # noqa: E402

CL = torch.channels_last
# First match wins: kernel-name patterns -> category.
CATEGORIES = [
    ("conv: cuDNN", r"cutlass__\d+x_cudnn"),  # cuDNN's own CUTLASS kernels, before resnet_ext's patterns
    ("conv: resnet_ext sm90", r"sm90_gemm|cutlass3|GemmUniversal|KernelTmaWarpSpecialized|sm90.*resnet_ext"),
    ("conv: resnet_ext sm80 (CUTLASS)", r"cutlass::Kernel|ImplicitGemmConvolution|cutlass.*Conv"),
    ("conv: cuDNN", r"xmma|cudnn|conv2d|implicit_convolve|fprop|dgrad|wgrad|sm90_.*conv|nhwc.*conv|convolve|nhwcAddPadding"),
    ("BN train (resnet_ext)", r"bn_act|bn_stats|bn_apply|bn_backward"),
    ("BN (stock)", r"batch_norm|batchnorm|bn_fw|bn_bw"),
    ("maxpool", r"max_pool|maxpool"),
    ("avgpool / reductions", r"avg_pool|adaptive|reduce_kernel|Reduce"),
    ("GEMM (cuBLAS nvjet: cuDNN's fused 1x1 convs, the fc)", r"nvjet|gemm|cublas|Gemm"),
    ("copies / format conversions", r"copy|Copy|nchwToNhwc|nhwcToNchw|transpose|permute|cat_"),
    ("optimizer", r"multi_tensor|foreach|sgd|adam"),
    ("elementwise", r"elementwise|vectorized|unrolled|relu|threshold|add_|mul_|fill"),
]


def category(name: str) -> str:
    for cat, pat in CATEGORIES:
        if re.search(pat, name, re.IGNORECASE):
            return cat
    return "other"


def _device_time_us(evt) -> float:
    for attr in ("device_time_total", "cuda_time_total"):
        if hasattr(evt, attr):
            return float(getattr(evt, attr))
    return 0.0


def profile(fn, iters: int, top: int) -> dict:
    from torch.profiler import ProfilerActivity, profile as prof_ctx

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with prof_ctx(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    kernels = [e for e in prof.key_averages() if _device_time_us(e) > 0 and e.device_type == torch.autograd.DeviceType.CUDA]
    if not kernels:  # older profilers: CUDA kernels appear with their device time on the event itself
        kernels = [e for e in prof.key_averages() if _device_time_us(e) > 0]
    total = sum(_device_time_us(e) for e in kernels)
    rows = sorted(({"name": e.key, "calls": e.count / iters, "ms": _device_time_us(e) / iters / 1e3,
                    "share": _device_time_us(e) / total if total else 0.0, "category": category(e.key)}
                   for e in kernels), key=lambda r: -r["ms"])
    cats: dict = {}
    for r in rows:
        c = cats.setdefault(r["category"], {"ms": 0.0, "kernels": 0, "calls": 0.0})
        c["ms"] += r["ms"]
        c["kernels"] += 1
        c["calls"] += r["calls"]
    for c in cats.values():
        c["share"] = c["ms"] / (total / iters / 1e3) if total else 0.0
    return {"total_ms": total / iters / 1e3, "top": rows[:top], "categories": cats, "n_kernels": len(rows)}


def events_ms(fn, repeats=10) -> float:
    return cuda_event_ms(fn, 1, repeats, warmup=2)


def stages(model, x, ours: bool) -> dict:
    """Each stage of the eval forward timed alone (its input computed once beforehand)."""
    def stem_conv(t):
        if ours:
            return units.unit(model.conv1, model.bn1, model.relu, t)
        return model.relu(model.bn1(model.conv1(t)))

    parts = [("stem conv+BN+ReLU", stem_conv), ("maxpool", model.maxpool), ("layer1", model.layer1),
             ("layer2", model.layer2), ("layer3", model.layer3), ("layer4", model.layer4),
             ("head (avgpool+fc)", lambda t: model.fc(torch.flatten(model.avgpool(t), 1)))]
    out, t = {}, x
    with torch.inference_mode(), contextlib.ExitStack() as stack:
        if ours:  # the whole model's BN folds, once (timed on their own), as the full forward does them
            out["BN fold (whole model, batched)"] = events_ms(lambda: engine.forward_state(model, x))
            stack.enter_context(units.forward_state(engine.forward_state(model, x)))
        for name, f in parts:
            out[name] = events_ms(lambda f=f, t=t: f(t))
            t = f(t)
    return out


def build(arch, impl, dtype, train):
    m = seeded_model(arch, impl).cuda().to(memory_format=CL)
    return (m.train() if train else m.to(dtype).eval())


def fmt_top(title: str, p: dict) -> list[str]:
    lines = [f"#### {title}: {p['total_ms']:.3f} ms of kernels per iteration, {p['n_kernels']} distinct kernels", "",
             "| # | kernel | category | calls/iter | ms/iter | share |", "|---|---|---|---|---|---|"]
    for i, r in enumerate(p["top"], 1):
        name = r["name"].replace("|", "/")
        name = name if len(name) <= 110 else name[:107] + "..."
        lines.append(f"| {i} | `{name}` | {r['category']} | {r['calls']:.0f} | {r['ms']:.3f} | {100 * r['share']:.1f}% |")
    lines += ["", "| category | kernels | calls/iter | ms/iter | share |", "|---|---|---|---|---|"]
    for c, v in sorted(p["categories"].items(), key=lambda kv: -kv[1]["ms"]):
        lines.append(f"| {c} | {v['kernels']} | {v['calls']:.0f} | {v['ms']:.3f} | {100 * v['share']:.1f}% |")
    return lines + [""]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--md")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[a.dtype]
    x = torch.randn(a.batch, 3, 224, 224, device="cuda").contiguous(memory_format=CL)
    target = torch.randint(0, 1000, (a.batch,), device="cuda")
    result, md = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "batch": a.batch,
                  "dtype": a.dtype}, []
    md.append(f"### Profile: {a.arch}, {torch.cuda.get_device_name()}, {a.dtype}, batch {a.batch}, channels_last")
    md.append("")
    for impl in ("resnet_ext", "torchvision"):
        model = build(a.arch, impl, dtype, train=False)
        xe = x.to(dtype)

        def fwd(model=model, xe=xe):
            with torch.inference_mode():
                return model(xe)

        p = profile(fwd, a.iters, a.top)
        p["stages_ms"] = stages(model, xe, impl == "resnet_ext")
        result[f"{impl}_eval"] = p
        md += fmt_top(f"{impl} eval forward", p)
        md += ["| stage (timed alone) | ms |", "|---|---|"]
        md += [f"| {k} | {v:.3f} |" for k, v in p["stages_ms"].items()] + [""]
        del model
    for impl in ("resnet_ext", "torchvision"):
        model = build(a.arch, impl, dtype, train=True)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step(model=model, opt=opt):
            with torch.autocast("cuda", dtype=dtype):
                loss = F.cross_entropy(model(x), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        p = profile(step, a.iters, a.top)
        result[f"{impl}_train"] = p
        md += fmt_top(f"{impl} AMP training step (forward, backward, SGD)", p)
        del model, opt
    text = "\n".join(md)
    print(text)
    if a.md:
        Path(a.md).write_text(text + "\n")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
