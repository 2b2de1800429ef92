"""`python -m resnet_ext bench`: whole-model throughput, torchvision vs resnet_ext, on whatever device is here."""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}


class Progress:
    """A one-line progress bar on stderr (no dependency); silent when stderr is not a terminal and --quiet."""

    def __init__(self, total: int, enabled: bool = True):
        self.total, self.done, self.enabled, self.start = total, 0, enabled, time.perf_counter()

    def step(self, label: str) -> None:
        self.done += 1
        if not self.enabled:
            return
        width = 30
        filled = int(width * self.done / self.total)
        elapsed = time.perf_counter() - self.start
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {label:<28} "
                         f"{elapsed:5.1f}s")
        if self.done == self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_model(fn, x, iters: int, warmup: int, device, progress: Progress, label: str) -> list[float]:
    """Per-iteration seconds of fn(x), after warm-up; CUDA work is synchronised around each iteration."""
    for _ in range(warmup):
        fn(x)
        progress.step(f"{label} warm-up")
    _sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn(x)
        _sync(device)
        times.append(time.perf_counter() - t0)
        progress.step(label)
    return times


def build_models(arch: str, device, dtype, channels_last: bool):
    import torchvision

    import resnet_ext

    torch.manual_seed(0)
    tv = getattr(torchvision.models, arch)()
    # Non-trivial BN statistics, so the output comparison means something.
    with torch.no_grad():
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    ours = getattr(resnet_ext, arch)()
    ours.load_state_dict(tv.state_dict())
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    tv = tv.to(device=device, dtype=dtype, memory_format=fmt).eval()
    ours = ours.to(device=device, dtype=dtype, memory_format=fmt).eval()
    return tv, ours


def run(args) -> dict:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    channels_last = not args.nchw
    tv, ours = build_models(args.arch, device, dtype, channels_last)
    peers = {"torchvision": tv, "resnet_ext": ours}
    if args.compile:
        peers["torchvision+compile"] = torch.compile(tv, mode=args.compile_mode)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=gen).to(device, dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    warmup = args.warmup if args.warmup is not None else (3 if device.type == "cuda" else 1)
    progress = Progress(len(peers) * (warmup + args.iters) * (2 if args.train else 1), enabled=not args.quiet)
    results: dict = {"arch": args.arch, "device": str(device), "dtype": str(dtype).replace("torch.", ""),
                     "batch_size": args.batch_size, "image_size": args.image_size, "channels_last": channels_last,
                     "torch": torch.__version__, "threads": torch.get_num_threads(), "eval": {}}
    if device.type == "cuda":
        results["gpu"] = torch.cuda.get_device_name(device)
    outputs = {}
    with torch.inference_mode():
        for name, model in peers.items():
            times = time_model(model, x, args.iters, warmup, device, progress, f"{name} eval")
            med = statistics.median(times)
            results["eval"][name] = {"median_s": med, "img_per_s": args.batch_size / med}
            outputs[name] = model(x).float()
    ref = outputs["torchvision"]
    for name, out in outputs.items():
        results["eval"][name]["max_abs_diff_vs_torchvision"] = (out - ref).abs().max().item()
        results["eval"][name]["rel_diff_vs_torchvision"] = ((out - ref).abs().max() / ref.abs().max()).item()
    results["eval_speedup"] = results["eval"]["resnet_ext"]["img_per_s"] / results["eval"]["torchvision"]["img_per_s"]
    if args.train:
        results["train"] = train_bench(peers, x, args, device, progress)
    return results


def train_bench(peers, x, args, device, progress) -> dict:
    """One SGD step per iteration (forward, loss, backward, step), with AMP autocast on CUDA for 16-bit dtypes."""
    out = {}
    target = torch.randint(0, 1000, (x.shape[0],), device=device)
    for name, model in peers.items():
        model = model.float() if x.dtype in (torch.float16, torch.bfloat16) else model
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        amp_dtype = x.dtype if x.dtype in (torch.float16, torch.bfloat16) else None
        xin = x.float() if amp_dtype else x

        def step(inp):
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = torch.nn.functional.cross_entropy(model(inp), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        warmup = args.warmup if args.warmup is not None else (3 if device.type == "cuda" else 1)
        times = time_model(step, xin, args.iters, warmup, device, progress, f"{name} train")
        med = statistics.median(times)
        out[name] = {"median_s": med, "img_per_s": x.shape[0] / med}
        if device.type == "cuda":
            out[name]["peak_mem_bytes"] = torch.cuda.max_memory_allocated(device)
        model.eval()
    out["speedup"] = out["resnet_ext"]["img_per_s"] / out["torchvision"]["img_per_s"]
    return out


def format_results(r: dict) -> str:
    lines = [f"{r['arch']} on {r.get('gpu', r['device'])}, {r['dtype']}, batch {r['batch_size']}, "
             f"{r['image_size']}x{r['image_size']}, {'channels_last' if r['channels_last'] else 'NCHW'}, "
             f"torch {r['torch']}"]
    lines.append(f"{'eval':<22}{'img/s':>10}{'median ms':>12}{'max |diff|':>14}")
    for name, v in r["eval"].items():
        lines.append(f"{name:<22}{v['img_per_s']:>10.1f}{v['median_s'] * 1e3:>12.2f}"
                     f"{v['max_abs_diff_vs_torchvision']:>14.3g}")
    lines.append(f"resnet_ext / torchvision eval: {r['eval_speedup']:.3f}x")
    if "train" in r:
        lines.append(f"{'train step':<22}{'img/s':>10}{'median ms':>12}{'peak MiB':>14}")
        for name, v in r["train"].items():
            if isinstance(v, dict):
                peak = v.get("peak_mem_bytes")
                lines.append(f"{name:<22}{v['img_per_s']:>10.1f}{v['median_s'] * 1e3:>12.2f}"
                             f"{(peak / 2**20 if peak else float('nan')):>14.0f}")
        lines.append(f"resnet_ext / torchvision train: {r['train']['speedup']:.3f}x")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", default="resnet50", choices=["resnet50", "resnet101", "resnet152"])
    p.add_argument("--batch-size", type=int, default=None, help="default: 8 on CPU, 256 on CUDA")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: fp32 on CPU, bf16 on CUDA")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--iters", type=int, default=None, help="timed iterations (default: 5 on CPU, 20 on CUDA)")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--nchw", action="store_true", help="NCHW inputs and weights instead of channels_last")
    p.add_argument("--compile", action="store_true", help="also time torch.compile of the torchvision model")
    p.add_argument("--compile-mode", default="max-autotune", help="torch.compile mode for --compile")
    p.add_argument("--train", action="store_true", help="also time one SGD training step (and peak memory)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def main(args) -> int:
    on_cuda = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if args.batch_size is None:
        args.batch_size = 256 if on_cuda else 8
    if args.iters is None:
        args.iters = 20 if on_cuda else 5
    r = run(args)
    print(format_results(r))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    return 0
