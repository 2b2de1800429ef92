"""Per conv layer of resnet50 on a CUDA GPU: every contender's time and error, in one process.

Contenders per shape: cuDNN's own fused op (torch.cudnn_convolution_relu / _add_relu, or a conv with a bias for
the ReLU-free downsample convs), resnet_ext's default choice (whatever the dispatcher picks; explain() names it),
resnet_ext's sm80 CUTLASS kernels (prefer_cudnn(False)), and each opt-in kernel forced where it can run: the sm_90a
CUTLASS 3 conv kernels and 1x1 GEMM kernels, and the few-channel stem kernels (sm80c4_*, #24.1), each of which gets
a verdict line against the default path and cuDNN. Each output is checked against a float32 (no TF32) reference with the
output poisoned with NaN before each launch; timing with CUDA events over batches of calls that rotate input sets
larger than the L2, median of several batches.

    python benchmarks/hopper_layers.py [--batch 256] [--dtype bf16] [--json FILE] [--md FILE]
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import resnet_ext  # noqa: E402
from resnet_ext._C_loader import _C  # noqa: E402
from resnet_ext.cli import cuda_event_ms  # noqa: E402
from resnet_ext.shapes import conv_shapes, rel_err  # noqa: E402

CL = torch.channels_last
OPT_IN = ("sm90_", "sm80c4_")  # kernel families registered unverified (forced here, one by one)


def make_set(s, dtype):
    return s.inputs(dtype)


def reference(s, x, w, b, r):
    return s.reference_fp32(x, w, b, r)


def time_ms(fn, sets, calls=10, repeats=7) -> float:
    """CUDA-event ms per call of fn, rotating through the input `sets` (so no set stays in L2)."""
    it = itertools.cycle(sets)
    return cuda_event_ms(lambda: fn(*next(it)), calls, repeats)


def contenders(s):
    st, pd, dl = s.stride, s.padding, s.dilation

    def ours(x, w, b, r):
        return resnet_ext.conv_bn_act(x, w, b, r, st, pd, dl, s.relu)

    if s.residual:
        def cudnn(x, w, b, r):
            return torch.cudnn_convolution_add_relu(x, w, r, 1.0, b, [st, st], [pd, pd], [dl, dl], 1)
    elif s.relu:
        def cudnn(x, w, b, r):
            return torch.cudnn_convolution_relu(x, w, b, [st, st], [pd, pd], [dl, dl], 1)
    else:
        def cudnn(x, w, b, r):
            return F.conv2d(x, w, b, st, pd, dl)
    return ours, cudnn


def run(batch: int, dtype: torch.dtype) -> list[dict]:
    tag = {torch.bfloat16: "_bf16_", torch.float16: "_f16_"}[dtype]
    optin = [k for k in resnet_ext.build_info()["fused_kernels"] if k.startswith(OPT_IN) and tag in k]
    rows = []
    for s in conv_shapes("resnet50", batch):
        per_set = (s.N * s.C * s.H * s.W + s.N * s.K * s.P * s.Q * (2 if s.residual else 1)) * 2
        l2 = torch.cuda.get_device_properties(0).L2_cache_size
        sets = [make_set(s, dtype) for _ in range(max(1, min(8, math.ceil(2 * l2 / per_set))))]
        ref = reference(s, *sets[0])
        ours, cudnn = contenders(s)
        row = {"shape": s.name, "flops": s.flops(), "min_bytes": s.min_bytes(2), "ms": {}, "err": {}, "path": {}}

        def measure(name, fn, path):
            try:
                _C.set_poison_outputs(True)
                y = fn(*sets[0])
                torch.cuda.synchronize()
                row["err"][name] = rel_err(y, ref)
                _C.set_poison_outputs(False)
                row["ms"][name] = time_ms(fn, sets)
                row["path"][name] = path
            except RuntimeError as e:
                row["path"][name] = f"error: {str(e).splitlines()[0][:200]}"
            finally:
                _C.set_poison_outputs(False)

        measure("cudnn_fused", cudnn, "cudnn")
        x, w, b, r = sets[0]
        args = (x, w, b, r, s.stride, s.padding, s.dilation, s.relu)
        measure("default", ours, resnet_ext.explain(*args)[0])
        resnet_ext.prefer_cudnn(False)
        try:
            measure("sm80", ours, resnet_ext.explain(*args)[0])
        finally:
            resnet_ext.prefer_cudnn(True)
        for k in optin:
            _C.force_kernel(k)
            try:
                path, why = resnet_ext.explain(*args)
                if path == f"fused:{k}":
                    measure(k, ours, path)
            finally:
                _C.force_kernel("")
        best = min((k for k in row["ms"] if k.startswith(OPT_IN)), key=lambda k: row["ms"][k], default=None)
        row["best_optin"] = best
        rows.append(row)
        print(format_row(row), flush=True)
    return rows


def format_row(r: dict) -> str:
    ms = r["ms"]

    def cell(k):
        return f"{ms[k]:.3f}" if k in ms else "-"

    best = r["best_optin"]
    ratio = f"{ms['cudnn_fused'] / ms[best]:.2f}x" if best and "cudnn_fused" in ms else "-"
    worst_err = max((v for k, v in r["err"].items() if k != "cudnn_fused"), default=float("nan"))
    return (f"| {r['shape']} | {cell('cudnn_fused')} | {cell('default')} ({r['path'].get('default', '-')}) | "
            f"{cell('sm80')} | {cell(best) if best else '-'} ({best or 'none'}) | {ratio} | "
            f"{r['err'].get('cudnn_fused', float('nan')):.1e} | {worst_err:.1e} |")


HEADER = ("| shape | cuDNN fused ms | resnet_ext default ms (path) | sm80 ms | best opt-in ms (kernel) | "
          "cuDNN / best opt-in | cuDNN rel err | worst resnet_ext rel err |\n|---|---|---|---|---|---|---|---|")


def stem_verdicts(rows: list[dict], tol: float) -> list[str]:
    """One line per few-channel (sm80c4) kernel: on each shape it ran, its time against the default path and cuDNN's
    op, and its error; "wrong" where the error is over the tolerance (NaN included)."""
    lines = []
    for k in sorted({k for r in rows for k in r["ms"] if k.startswith("sm80c4_")}):
        for r in rows:
            if k not in r["ms"]:
                continue
            ms, err = r["ms"][k], r["err"][k]
            default, cudnn = (r["ms"].get(name, float("nan")) for name in ("default", "cudnn_fused"))
            lines.append(f"verdict stem {k} on {r['shape']}: {ms:.3f} ms; default {default:.3f} ms "
                         f"({r['path'].get('default', '-')}) -> {default / ms:.2f}x; cuDNN {cudnn:.3f} ms -> "
                         f"{cudnn / ms:.2f}x; rel err {err:.1e} "
                         + ("ok" if err <= tol else f"WRONG (tolerance {tol:.0e})"))
    return lines or ["verdict stem: no sm80c4 kernel ran (not an experimental build, or no shape it accepts)"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    p.add_argument("--json")
    p.add_argument("--md")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("hopper_layers: needs a CUDA device", file=sys.stderr)
        return 2
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[a.dtype]
    print(f"{torch.cuda.get_device_name()}, {a.dtype}, batch {a.batch}, channels_last; rel err vs fp32 (no TF32)")
    print(HEADER)
    rows = run(a.batch, dtype)
    tot = {k: sum(r["ms"].get(k, 0.0) for r in rows) for k in ("cudnn_fused", "default", "sm80")}
    tot["best_per_layer_ours"] = sum(min(v for k, v in r["ms"].items() if k != "cudnn_fused") for r in rows)
    bad = [(r["shape"], k, v) for r in rows for k, v in r["err"].items() if not v <= (1e-2 if a.dtype == "bf16" else 3e-3)]
    summary = (f"sum over the {len(rows)} distinct shapes (ms): cuDNN fused {tot['cudnn_fused']:.3f}, default "
               f"{tot['default']:.3f}, sm80 {tot['sm80']:.3f}, best of ours per layer {tot['best_per_layer_ours']:.3f}; "
               f"errors over tolerance: {bad if bad else 'none'}")
    print(summary)
    verdicts = stem_verdicts(rows, 1e-2 if a.dtype == "bf16" else 3e-3)
    print("\n".join(verdicts))
    if a.json:
        Path(a.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                            "dtype": a.dtype, "batch": a.batch, "rows": rows, "totals_ms": tot,
                                            "errors_over_tolerance": bad}, indent=1))
    if a.md:
        Path(a.md).write_text("\n".join([HEADER] + [format_row(r) for r in rows] + ["", summary, ""] + verdicts + [""]))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
