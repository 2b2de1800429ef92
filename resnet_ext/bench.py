"""`python -m resnet_ext bench`: whole-model throughput, torchvision vs resnet_ext, on whatever device is here.

The contenders run in interleaved rounds (one timed call of each per round, A, B, C, A, B, C, ...), so a machine
that speeds up or slows down during the run moves every contender alike; each row shows the median over the rounds
and its spread (min-max), and each ratio is the median of the per-round ratios with their min-max. On the CPU each
timed eval call follows an untimed one of the same contender (`cli.time_interleaved`'s `settle`): ONNX Runtime's and
OpenVINO's worker threads spin after their calls and would take the cores of whoever is timed next.

Eval rows: torchvision eager; resnet_ext in its default mode (every forward reads the live weights); resnet_ext in
its explicit frozen mode (`resnet_ext.freeze(model)`); with --compile, torch.compile of the torchvision model with
inductor's freezing (weights as constants, the peer of resnet_ext's frozen mode), whose warm-up time is the
compile time. What the subcommands share (one-line user errors, argument checks, progress, the
interleaved timer) is in `resnet_ext.cli`."""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

import torch

from .cli import (Progress, UserError, check_batch_fits, check_writable, default_device, device_arg, first_sentence,
                  int_at_least, out_of_memory, ratio, summarize, sync, time_interleaved)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}
ARCHS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
TV, OURS, FROZEN, COMPILED = "torchvision", "resnet_ext", "resnet_ext frozen", "torchvision+compile"
FROZEN_BF16 = "resnet_ext frozen bf16"
OURS_FUSED_BN = "resnet_ext fused BN"
OURS_FUSED_TRAIN = "resnet_ext fused train"  # --fused-train: switches.fused_train(True) for its steps
FROZEN_GRAPHS = "resnet_ext frozen graphs"  # freeze(model, cuda_graphs=True)
OURS_FLAT, FROZEN_FLAT = "resnet_ext flat", "resnet_ext frozen flat"  # --flat-cuda: switches.on_cuda(True)
FROZEN_GRAPH, FROZEN_BF16_GRAPH = "resnet_ext frozen graph", "resnet_ext frozen bf16 graph"  # --onednn-graph
ORT, OPENVINO, OPENVINO_BF16 = "onnxruntime", "openvino", "openvino bf16"  # CPU runtimes (--runtimes)  # train: the default model with train_bn("fused")


# ---------------------------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------------------------

def seeded_model(arch: str, impl: str) -> torch.nn.Module:
    """torchvision's `arch` with the weights torch.manual_seed(0) gives it, or (impl "resnet_ext") resnet_ext's
    with those same weights: the pair every model benchmark compares."""
    import torchvision

    import resnet_ext

    torch.manual_seed(0)
    tv = getattr(torchvision.models, arch)()
    if impl != "resnet_ext":
        return tv
    m = getattr(resnet_ext, arch)()
    m.load_state_dict(tv.state_dict())
    return m


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compiled_name(mode: str, first: bool) -> str:
    """The contender name of torch.compile in `mode`: the first mode asked for is COMPILED, others add the mode."""
    return COMPILED if first else f"{COMPILED} {mode}"


def warmup_calls(name: str, warmup: int) -> int:
    """A compiled peer always gets one warm-up call: its first call compiles, which is not a timed round."""
    return max(warmup, 1) if name.startswith(COMPILED) else warmup


def build_models(arch: str, device, dtype, channels_last: bool):
    """(torchvision model, resnet_ext model in the default mode, resnet_ext model frozen, seconds freeze took):
    the same weights, with non-trivial BN statistics so the output comparison means something."""
    import resnet_ext

    tv = seeded_model(arch, "torchvision")
    with torch.no_grad():
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    models = []
    for _ in range(2):
        m = getattr(resnet_ext, arch)()
        m.load_state_dict(tv.state_dict())
        models.append(m.to(device=device, dtype=dtype, memory_format=fmt).eval())
    ours, frozen = models
    tv = tv.to(device=device, dtype=dtype, memory_format=fmt).eval()
    sync(device)
    t0 = time.perf_counter()
    frozen = resnet_ext.freeze(frozen)
    sync(device)
    return tv, ours, frozen, time.perf_counter() - t0


def compile_frozen(model, mode: str | None):
    """torch.compile(model) for inference with inductor's freezing on (parameters become constants: folded and,
    on the CPU, prepacked), the fair peer of resnet_ext.freeze. Freezing applies only to graphs compiled with
    gradients off, so eval calls run under inference_mode."""
    compiled = torch.compile(model, mode=mode)

    def run(x):
        with torch._inductor.config.patch(freezing=True):
            return compiled(x)

    return run


def runtime_peers(tv, x, bf16: bool) -> tuple[dict, dict, dict]:
    """The CPU runtimes a user deploys a ResNet with, where installed: ONNX Runtime (all graph optimizations) and
    OpenVINO (latency hint; fp32, and bf16 with `bf16`), each on torchvision's model exported to ONNX for this
    input shape, with torch's thread count. Returns ({name: run(x)}, {name: setup seconds}, {name: version})."""
    import tempfile

    import numpy as np

    peers, setup, versions = {}, {}, {}
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="resnet_ext_bench_") as tmp:  # the sessions hold the model: no file left
        path = os.path.join(tmp, "model.onnx")
        t0 = time.perf_counter()
        with torch.no_grad():
            torch.onnx.export(tv.float(), (x.float().contiguous(),), path, input_names=["x"], output_names=["y"],
                              dynamo=False)
        export_s = time.perf_counter() - t0

        def feed(t):  # ONNX models take NCHW: a channels_last input is copied, as a caller would have to
            return np.ascontiguousarray(t.float().numpy())

        try:
            import onnxruntime as ort
        except ImportError:
            ort = None
        if ort is not None:
            t0 = time.perf_counter()
            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
            sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
            peers[ORT] = lambda t, s=sess: torch.from_numpy(s.run(None, {"x": feed(t)})[0])
            setup[ORT], versions[ORT] = export_s + time.perf_counter() - t0, ort.__version__
        try:
            import openvino as ov
        except ImportError:
            ov = None
        if ov is not None:
            core = ov.Core()
            for name, precision in ((OPENVINO, "f32"), (OPENVINO_BF16, "bf16"))[:2 if bf16 else 1]:
                t0 = time.perf_counter()
                compiled = core.compile_model(core.read_model(path), "CPU", {
                    "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads,
                    "INFERENCE_PRECISION_HINT": precision})
                peers[name] = lambda t, c=compiled: torch.from_numpy(c(feed(t))[0])
                setup[name], versions[name] = export_s + time.perf_counter() - t0, ov.__version__
    return peers, setup, versions


def _with_switch(model, switch):
    """model(x) with `switch(True)` (one of `resnet_ext.switches`) for the call."""
    def call(x):
        previous = switch(True)
        try:
            return model(x)
        finally:
            switch(previous)
    return call


def run(args) -> dict:
    from . import switches  # here, not at the top: an argument error never loads the extension
    device = default_device(args.device)
    dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    channels_last = not args.nchw
    compile_modes = (args.compile_mode or ("max-autotune" if device.type == "cuda" else "default")).split(",")
    compile_mode = compile_modes[0]  # the one the training step compiles with
    tv, ours, frozen, freeze_s = build_models(args.arch, device, dtype, channels_last)
    peers = {TV: tv, OURS: ours, FROZEN: frozen}
    setup_s = {TV: 0.0, OURS: 0.0, FROZEN: freeze_s}
    if args.frozen_bf16:  # the fp32 model frozen with bf16 convolutions (fp32 in and out)
        import resnet_ext
        t0 = time.perf_counter()
        peers[FROZEN_BF16] = resnet_ext.freeze(copy.deepcopy(ours), dtype=torch.bfloat16)
        setup_s[FROZEN_BF16] = time.perf_counter() - t0
    if args.cuda_graphs:  # the frozen mode replaying CUDA graphs (its first call per signature captures)
        import resnet_ext
        t0 = time.perf_counter()
        peers[FROZEN_GRAPHS] = resnet_ext.freeze(copy.deepcopy(ours), cuda_graphs=True)
        setup_s[FROZEN_GRAPHS] = time.perf_counter() - t0
    if args.flat_cuda:  # the same models, their CUDA forward as the recorded sequence of fused units
        for name, model in ((OURS_FLAT, ours), (FROZEN_FLAT, frozen)):
            peers[name], setup_s[name] = _with_switch(model, switches.on_cuda), 0.0
    if args.onednn_graph:  # the frozen models' forward as one oneDNN Graph (its first call per shape builds it)
        for name, base in ((FROZEN_GRAPH, FROZEN), (FROZEN_BF16_GRAPH, FROZEN_BF16)):
            if base in peers:
                peers[name], setup_s[name] = _with_switch(copy.deepcopy(peers[base]), switches.cpu_onednn_graph), 0.0
    if args.compile:
        for i, mode in enumerate(compile_modes):
            peers[compiled_name(mode, i == 0)] = compile_frozen(tv, mode)
            setup_s[compiled_name(mode, i == 0)] = 0.0
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=gen).to(device, dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    versions = {}
    if args.runtimes:
        more, more_setup, versions = runtime_peers(copy.deepcopy(tv), x, args.frozen_bf16)
        peers.update(more)
        setup_s.update(more_setup)
    warmup = args.warmup if args.warmup is not None else (3 if device.type == "cuda" else 1)
    warm_n = {name: warmup_calls(name, warmup) for name in peers}
    settle = 1 if device.type == "cpu" else 0  # see time_interleaved
    total = sum(warm_n.values()) + args.iters * len(peers)
    if args.train:  # the frozen model does not train
        train_names = [TV, OURS, OURS_FUSED_BN] + ([COMPILED] if args.compile else []) \
            + ([OURS_FUSED_TRAIN] if args.fused_train else [])  # as train_bench times
        total += sum(warmup_calls(name, warmup) + args.iters for name in train_names)
    progress = Progress(total, enabled=not args.quiet)
    results: dict = {"kind": "resnet_ext.bench", "arch": args.arch, "device": str(device),
                     "dtype": str(dtype).replace("torch.", ""), "batch_size": args.batch_size,
                     "image_size": args.image_size, "channels_last": channels_last, "torch": torch.__version__,
                     "threads": torch.get_num_threads(), "iters": args.iters, "warmup": warmup,
                     "order": "interleaved", "settle": settle, "autotune": args.autotune, "bn_optin": args.bn_optin,
                     "eval": {}}
    if args.compile:
        results["compile"] = {"mode": compile_mode, "modes": compile_modes, "eval_freezing": True}
    if versions:
        results["runtimes"] = versions
    if device.type == "cuda":
        results["gpu"] = torch.cuda.get_device_name(device)
    with torch.inference_mode():
        times, warm = time_interleaved(peers, x, args.iters, warm_n, progress, "eval", settle=settle)
        ref = tv(x).float()
        for name, fn in peers.items():
            rec = summarize(times[name])
            rec["img_per_s"] = args.batch_size / rec["median_s"]
            rec["warmup_s"] = setup_s[name] + warm[name]
            out = fn(x).float()
            rec["max_abs_diff_vs_torchvision"] = (out - ref).abs().max().item()
            rec["rel_diff_vs_torchvision"] = ((out - ref).abs().max() / ref.abs().max()).item()
            results["eval"][name] = rec
    results["eval_speedups"] = {name: ratio(times[TV], times[name]) for name in peers if name != TV}
    if args.compile:
        for name in (FROZEN, FROZEN_GRAPHS):
            for i, mode in enumerate(compile_modes if name in peers else []):
                peer = compiled_name(mode, i == 0)
                results["eval_speedups"][f"{name} vs {peer}"] = ratio(times[peer], times[name])
    for ours_name, peer in ((FROZEN, ORT), (FROZEN, OPENVINO), (FROZEN_BF16, OPENVINO_BF16), (OURS_FLAT, OURS),
                            (FROZEN_FLAT, FROZEN), (FROZEN_GRAPH, FROZEN), (FROZEN_GRAPH, ORT),
                            (FROZEN_GRAPH, OPENVINO), (FROZEN_BF16_GRAPH, FROZEN_BF16),
                            (FROZEN_BF16_GRAPH, OPENVINO_BF16)):
        if ours_name in peers and peer in peers:
            results["eval_speedups"][f"{ours_name} vs {peer}"] = ratio(times[peer], times[ours_name])
    results["eval_speedup"] = results["eval_speedups"][FROZEN]["median"]
    if args.train:
        results["train"] = train_bench(tv, ours, x, args, device, progress, warmup, compile_mode)
    return results


def train_step(forward, params, target, amp_dtype=None, train_mode=None, fused_train=None):
    """The training step every benchmark times: per call one SGD step (momentum 0.9) of cross-entropy on
    `forward(inp)` against `target`, under AMP autocast to `amp_dtype` if given, with the models' train-mode BN
    set to `train_mode` (see `train_bn`; None: as it is) and `switches.fused_train` to `fused_train` (None: as it
    is) for the step."""
    from . import switches  # here, not at the top: an argument error never loads the extension
    from .engine.units import train_bn

    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)

    def step(inp):
        previous = train_bn(train_mode)
        previous_fused = switches.fused_train(fused_train)
        try:
            with torch.autocast(target.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = torch.nn.functional.cross_entropy(forward(inp), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        finally:
            train_bn(previous)
            switches.fused_train(previous_fused)
    return step


def train_bench(tv, ours, x, args, device, progress, warmup, compile_mode) -> dict:
    """One SGD step per call (forward, loss, backward, step), with AMP autocast for 16-bit dtypes; the contenders
    interleaved like eval. torchvision, resnet_ext in the default mode (a frozen model does not train) and a copy
    of it with the fused training BN forced (`train_bn("fused")`: what decides the per-device default), with
    --compile a torch.compile of a copy of the torchvision model (no freezing: it trains), and with --fused-train a
    copy of ours with `fused_train(True)` (the Bottlenecks as the fused conv + BN statistics decomposition)."""
    target = torch.randint(0, 1000, (x.shape[0],), device=device)
    amp_dtype = x.dtype if x.dtype in (torch.float16, torch.bfloat16) else None
    xin = x.float() if amp_dtype else x
    models = {TV: tv, OURS: ours, OURS_FUSED_BN: copy.deepcopy(ours)}
    if args.compile:
        models[COMPILED] = copy.deepcopy(tv)
    if args.fused_train:
        models[OURS_FUSED_TRAIN] = copy.deepcopy(ours)
    steps = {}
    for name, model in models.items():
        model = model.float() if amp_dtype else model
        model.train()
        fwd = torch.compile(model, mode=compile_mode) if name == COMPILED else model
        steps[name] = train_step(fwd, model.parameters(), target, amp_dtype,
                                 "fused" if name == OURS_FUSED_BN else None, True if name == OURS_FUSED_TRAIN else None)
    warm_s, peaks = {}, {}
    for name, step in steps.items():  # warm-up one contender at a time, so peak memory is each one's own
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        _, w = time_interleaved({name: step}, xin, 0, {name: warmup_calls(name, warmup)}, progress, "train")
        warm_s[name] = w[name]
        if device.type == "cuda" and warmup_calls(name, warmup):
            peaks[name] = torch.cuda.max_memory_allocated(device)
    times, _ = time_interleaved(steps, xin, args.iters, {name: 0 for name in steps}, progress, "train")
    out: dict = {}
    for name in steps:
        rec = summarize(times[name])
        rec["img_per_s"] = x.shape[0] / rec["median_s"]
        rec["warmup_s"] = warm_s[name]
        if name in peaks:
            rec["peak_mem_bytes"] = peaks[name]
        out[name] = rec
    for m in models.values():
        m.eval()
    speedups = {name: ratio(times[TV], times[name]) for name in steps if name != TV}
    return {"models": out, "speedups": speedups, "speedup": speedups[OURS]["median"]}


# ---------------------------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------------------------

def _spread(v: dict) -> str:
    return f"{v['min_s'] * 1e3:.2f}-{v['max_s'] * 1e3:.2f}"


def _ratio_line(name: str, base: str, s: dict) -> str:
    return f"{name} / {base}: {s['median']:.3f}x (per round {s['min']:.3f}-{s['max']:.3f}x)"


def format_results(r: dict) -> str:
    lines = [f"{r['arch']} on {r.get('gpu', r['device'])}, {r['dtype']}, batch {r['batch_size']}, "
             f"{r['image_size']}x{r['image_size']}, {'channels_last' if r['channels_last'] else 'NCHW'}, "
             f"torch {r['torch']}, {r['threads']} threads; median of {r['iters']} interleaved rounds after "
             f"{r['warmup']} warm-up call(s)"
             + ("; each timed call right after an untimed one of its own" if r.get("settle") else "")]
    if "compile" in r:
        for i, mode in enumerate(r["compile"].get("modes", [r["compile"]["mode"]])):
            lines.append(f"{compiled_name(mode, i == 0)}: torch.compile(mode={mode!r}) with inductor freezing for "
                         f"eval; its warm-up is the compile time")
    w = max([22] + [len(n) + 2 for n in r["eval"]])  # the name column fits the longest contender name
    head = f"{'':<{w}}{'img/s':>10}{'median ms':>12}{'min-max ms':>20}{'warm-up s':>11}"
    lines.append(f"{'eval' + head[4:]}{'max |diff|':>13}")
    for name, v in r["eval"].items():
        lines.append(f"{name:<{w}}{v['img_per_s']:>10.1f}{v['median_s'] * 1e3:>12.2f}{_spread(v):>20}"
                     f"{v['warmup_s']:>11.2f}{v['max_abs_diff_vs_torchvision']:>13.3g}")
    for name, s in r["eval_speedups"].items():
        lines.append(_ratio_line(name, TV, s) if " vs " not in name else
                     _ratio_line(*name.split(" vs "), s))
    if "train" in r:
        t = r["train"]
        lines.append(f"{'train step' + head[10:]}{'peak MiB':>13}")
        for name, v in t["models"].items():
            peak = v.get("peak_mem_bytes")
            lines.append(f"{name:<{w}}{v['img_per_s']:>10.1f}{v['median_s'] * 1e3:>12.2f}{_spread(v):>20}"
                         f"{v['warmup_s']:>11.2f}{(f'{peak / 2**20:.0f}' if peak else '-'):>13}")
        for name, s in t["speedups"].items():
            lines.append(_ratio_line(name, TV, s) + " (train)")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", default="resnet50", choices=ARCHS)
    p.add_argument("--batch-size", type=int_at_least(1), default=None, help="default: 8 on CPU, 256 on CUDA")
    p.add_argument("--image-size", type=int_at_least(32), default=224)
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: fp32 on CPU, bf16 on CUDA")
    p.add_argument("--device", type=device_arg, default=None, help="cpu, cuda or cuda:N (default: cuda if "
                   "available, else cpu)")
    p.add_argument("--iters", type=int_at_least(1), default=None,
                   help="timed rounds (default: 5 on CPU, 20 on CUDA)")
    p.add_argument("--warmup", type=int_at_least(0), default=None,
                   help="untimed calls per contender first (default: 1 on CPU, 3 on CUDA)")
    p.add_argument("--nchw", action="store_true", help="NCHW inputs and weights instead of channels_last")
    p.add_argument("--compile", action="store_true",
                   help="also time torch.compile of the torchvision model (eval: with inductor freezing)")
    p.add_argument("--compile-mode", default=None,
                   help="torch.compile mode for --compile, or several separated by commas, each one contender "
                        "(e.g. default,reduce-overhead; the first one also for --train; default: max-autotune on "
                        "CUDA, default on CPU)")
    p.add_argument("--frozen-bf16", action="store_true",
                   help="also time resnet_ext.freeze(model, dtype=torch.bfloat16): bf16 convolutions behind an fp32 "
                        "interface (CPU with native bf16, fp32 model)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="also time resnet_ext.freeze(model, cuda_graphs=True): the frozen forward replayed as a CUDA "
                        "graph per input signature (CUDA)")
    p.add_argument("--flat-cuda", action="store_true",
                   help="also time the default and frozen models with resnet_ext.switches.on_cuda(True): the CUDA eval "
                        "forward as one recorded sequence of fused units instead of the module tree (CUDA)")
    p.add_argument("--onednn-graph", action="store_true",
                   help="also time the frozen model (and with --frozen-bf16 its bf16 one) with resnet_ext.switches."
                        "cpu_onednn_graph(True): the forward as one oneDNN Graph per input shape (CPU)")
    p.add_argument("--runtimes", action="store_true",
                   help="also time the CPU runtimes that are installed (onnxruntime; openvino, with --frozen-bf16 "
                        "also its bf16), each on torchvision's model exported to ONNX (CPU, fp32)")
    p.add_argument("--train", action="store_true", help="also time one SGD training step (and peak GPU memory)")
    p.add_argument("--fused-train", action="store_true",
                   help="with --train, also time resnet_ext with fused_train(True): its Bottlenecks as the fused "
                        "conv + BN statistics decomposition (on CUDA a build made with RESNET_EXT_EXPERIMENTAL=1)")
    p.add_argument("--autotune", action="store_true",
                   help="resnet_ext.autotune(True) for the run: every fused candidate timed per layer, the fastest "
                        "kept")
    p.add_argument("--bn-optin", action="store_true",
                   help="resnet_ext.bn_optin(True) for the run: the opt-in training-BN CUDA kernels (a build made "
                        "with RESNET_EXT_EXPERIMENTAL=1)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON (checked writable before the run)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def main(args) -> int:
    import resnet_ext
    try:
        on_cuda = default_device(args.device).type == "cuda"
        if args.batch_size is None:
            args.batch_size = 256 if on_cuda else 8
        if args.iters is None:
            args.iters = 20 if on_cuda else 5
        if args.train and args.batch_size < 2:
            raise UserError("--train needs --batch-size >= 2 (training-mode BatchNorm needs more than one value "
                            "per channel)")
        for mode in (args.compile_mode or "default").split(","):
            if mode not in COMPILE_MODES:
                raise UserError(f"--compile-mode: {mode!r} is not a torch.compile mode (one of "
                                f"{', '.join(COMPILE_MODES)}, or several separated by commas)")
        if args.compile_mode and not args.compile:
            raise UserError("--compile-mode sets the mode of --compile's contenders: add --compile")
        if args.autotune and not (on_cuda and resnet_ext.build_info()["fused_kernels"]):
            raise UserError("--autotune times resnet_ext's fused CUDA kernels per layer: it needs a CUDA device "
                            "(--device cuda) and a build with them")
        if args.runtimes and (on_cuda or (args.dtype or "fp32") != "fp32"):
            raise UserError("--runtimes is for fp32 models on the CPU (--device cpu, --dtype fp32)")
        if args.cuda_graphs and not on_cuda:
            raise UserError("--cuda-graphs needs a CUDA device (--device cuda)")
        if args.flat_cuda and not on_cuda:
            raise UserError("--flat-cuda needs a CUDA device (--device cuda)")
        if args.onednn_graph and on_cuda:
            raise UserError("--onednn-graph is for the CPU (--device cpu)")
        if args.frozen_bf16:
            if on_cuda or (args.dtype or "fp32") != "fp32":
                raise UserError("--frozen-bf16 is for fp32 models on the CPU (--device cpu, --dtype fp32)")
            if not resnet_ext.ops.onednn_takes(torch.bfloat16):
                raise UserError("--frozen-bf16: this CPU has no native bf16 (AVX512-BF16 or AMX)")
        if args.bn_optin and not resnet_ext.build_info().get("experimental"):
            raise UserError("--bn-optin: the opt-in BN kernels are only in a build made with "
                            "RESNET_EXT_EXPERIMENTAL=1")
        if args.fused_train and not args.train:
            raise UserError("--fused-train times a training step: add --train")
        if args.fused_train and args.arch in ("resnet18", "resnet34"):  # its row would be the default model's
            raise UserError(f"--fused-train fuses Bottleneck blocks, which {args.arch} has none of (BasicBlocks): "
                            f"use --arch resnet50, resnet101 or resnet152")
        if args.fused_train and on_cuda and not resnet_ext.build_info().get("experimental"):
            raise UserError("--fused-train on CUDA runs cuDNN graphs that only a build made with "
                            "RESNET_EXT_EXPERIMENTAL=1 has")
        check_batch_fits(args.batch_size, args.image_size, default_device(args.device),
                         f"--batch-size {args.batch_size} --image-size {args.image_size}")
        if args.json is not None:
            if not args.json:
                raise UserError("--json: empty path")
            check_writable(args.json, "--json")
    except UserError as e:
        print(f"python -m resnet_ext bench: error: {e}", file=sys.stderr)
        return 2
    resnet_ext.autotune(args.autotune)
    resnet_ext.bn_optin(args.bn_optin)
    try:
        r = run(args)
    except (RuntimeError, MemoryError) as e:
        if not out_of_memory(e):
            raise
        print(f"python -m resnet_ext bench: error: out of memory at --batch-size {args.batch_size} --image-size "
              f"{args.image_size} ({first_sentence(e)})", file=sys.stderr)
        return 1
    print(format_results(r))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    return 0
