"""`python -m resnet_ext report RESULTS.json`: benchmark JSON -> a markdown table per benchmark kind and a PNG bar
chart of speedups. RESULTS.json is either the benchmark suite's pytest-benchmark JSON (`pytest benchmarks/
--benchmark-json=FILE`: shape, each implementation's time, speedups, % of roofline per layer) or the output of
`python -m resnet_ext bench --json FILE` (whole-model throughput per contender). Any other file is a one-line
error, exit code 2."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import defaultdict
from pathlib import Path

from .cli import UserError, check_writable

BASELINES = {"conv_bn_act": "stock", "bn_act_train": "stock", "model_eval": "torchvision_cl",
             "model_train": "torchvision_cl"}
OURS = "resnet_ext"


EXPECTED = ("expected pytest-benchmark JSON (pytest benchmarks/ --benchmark-json=FILE) or the output of "
            "python -m resnet_ext bench --json FILE")


def read_json(path: str):
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{path}: is a directory, not a benchmark JSON file")
    if not p.is_file():
        raise UserError(f"{path}: no such file")
    try:
        return json.loads(p.read_text())
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file; {EXPECTED}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or type(e).__name__})") from None


def is_bench_output(data) -> bool:
    """`python -m resnet_ext bench --json` output (also the files written before it had a "kind")."""
    if not isinstance(data, dict):
        return False
    return data.get("kind") == "resnet_ext.bench" or ("arch" in data and isinstance(data.get("eval"), dict))


def _rows_ok(rows) -> bool:
    """A bench table: {contender: {"median_s": a positive time, ...}}, at least one row."""
    return (isinstance(rows, dict) and bool(rows)
            and all(isinstance(v, dict) and type(v.get("median_s")) in (int, float) and v["median_s"] > 0
                    and math.isfinite(v["median_s"]) for v in rows.values()))


def load(path: str) -> dict:
    """pytest-benchmark JSON: {"format": "pytest-benchmark", "results": {kind: {group: {impl: record}}}, ...} with
    per-call seconds (pytest-benchmark stats / inner launches). bench --json output: {"format": "bench",
    "bench": the file's dict}. UserError for anything else."""
    data = read_json(path)
    if is_bench_output(data):
        if not _rows_ok(data.get("eval")):
            raise UserError(f"{path}: a bench file without a valid 'eval' table (contenders with a positive "
                            f"'median_s'); {EXPECTED}")
        return {"format": "bench", "bench": data}
    if not isinstance(data, dict):
        raise UserError(f"{path}: holds a JSON {type(data).__name__}, not a benchmark file; {EXPECTED}")
    if not isinstance(data.get("benchmarks"), list):
        raise UserError(f"{path}: not a benchmark file (no 'benchmarks' list, no bench 'eval' table); {EXPECTED}")
    out: dict = defaultdict(lambda: defaultdict(dict))
    for n, b in enumerate(data["benchmarks"]):
        info = b.get("extra_info", {}) if isinstance(b, dict) else {}
        if "impl" not in info:
            continue
        try:
            inner = info.get("inner", 1)
            rec = dict(info)
            rec["median_s"] = b["stats"]["median"] / inner
            rec["min_s"] = b["stats"]["min"] / inner
            out[info["kind"]][b.get("group") or info.get("shape")][info["impl"]] = rec
        except (KeyError, TypeError, ZeroDivisionError) as e:
            raise UserError(f"{path}: benchmark {n} ({b.get('name', '?')}) is malformed "
                            f"({type(e).__name__}: {e})") from None
    if not out:
        raise UserError(f"{path}: pytest-benchmark JSON with no resnet_ext benchmark records (none has "
                        f"extra_info 'impl'); run pytest benchmarks/ --benchmark-json=FILE")
    return {"format": "pytest-benchmark", "machine": data.get("machine_info", {}),
            "commit": data.get("commit_info", {}), "datetime": data.get("datetime"), "results": out}


def geomean(xs):
    xs = [x for x in xs if x and x > 0 and math.isfinite(x)]
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else float("nan")


def _fmt_t(s):
    return f"{s * 1e3:.3f}" if s is not None else "—"


def tables(rep: dict) -> tuple[str, dict]:
    lines, speedups = [], {}
    for kind, groups in rep["results"].items():
        impls = sorted({i for g in groups.values() for i in g}, key=lambda i: (i.startswith(OURS), i))
        base = BASELINES.get(kind, impls[0])
        lines.append(f"\n### {kind}\n")
        head = ["shape"] + [f"{i} (ms)" for i in impls] + [f"{OURS} vs {i}" for i in impls if i != OURS]
        if kind in ("conv_bn_act", "bn_act_train"):
            head += [f"{OURS} % of roofline", f"{OURS} path"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        ratio_cols = defaultdict(list)
        for group, by_impl in groups.items():
            row = [group] + [_fmt_t(by_impl[i]["median_s"]) if i in by_impl else "—" for i in impls]
            ours = by_impl.get(OURS)
            for i in impls:
                if i == OURS:
                    continue
                if ours and i in by_impl:
                    r = by_impl[i]["median_s"] / ours["median_s"]
                    ratio_cols[i].append(r)
                    row.append(f"{r:.2f}x")
                else:
                    row.append("—")
            if kind in ("conv_bn_act", "bn_act_train"):
                if ours and ours.get("roofline_s"):
                    row.append(f"{100 * ours['roofline_s'] / ours['median_s']:.0f}%")
                else:
                    row.append("—")
                row.append(ours.get("path", "—") if ours else "—")
            lines.append("| " + " | ".join(row) + " |")
            if ours and base in by_impl:
                speedups.setdefault(kind, {})[group] = by_impl[base]["median_s"] / ours["median_s"]
        summary = ", ".join(f"vs {i}: {geomean(v):.3f}x" for i, v in ratio_cols.items())
        lines.append(f"\nGeomean speedup of {OURS} ({len(groups)} rows): {summary}")
    return "\n".join(lines), speedups


def header(rep: dict) -> str:
    m, c = rep["machine"], rep["commit"]
    gpu = next((r.get("device") for g in rep["results"].values() for i in g.values() for r in i.values()), "?")
    torch_v = next((r.get("torch") for g in rep["results"].values() for i in g.values() for r in i.values()), "?")
    return (f"Device: {gpu}; CPU: {m.get('cpu', {}).get('brand_raw', '?')}; torch {torch_v}; "
            f"commit {c.get('id', '?')[:12]}{' (dirty)' if c.get('dirty') else ''}; date {rep['datetime']}")


def bench_tables(b: dict) -> tuple[str, str, dict]:
    """(header, markdown tables, {kind: {contender: speedup vs torchvision}}) of bench --json output."""
    head = (f"Device: {b.get('gpu', b.get('device', '?'))}; {b.get('arch', '?')}, {b.get('dtype', '?')}, batch "
            f"{b.get('batch_size', '?')}, {b.get('image_size', '?')}x{b.get('image_size', '?')}, "
            f"{'channels_last' if b.get('channels_last') else 'NCHW'}; torch {b.get('torch', '?')}; "
            f"{b.get('threads', '?')} threads; median of {b.get('iters', '?')} "
            f"{'interleaved ' if b.get('order') == 'interleaved' else ''}rounds"
            f"{', each timed call right after an untimed one of its own' if b.get('settle') else ''} "
            f"(python -m resnet_ext bench)")
    lines, speedups = [], {}
    sections = [("model_eval", b["eval"], b.get("eval_speedups", {}))]
    if isinstance(b.get("train"), dict):
        t = b["train"]
        models = t.get("models") or {k: v for k, v in t.items() if isinstance(v, dict) and "median_s" in v}
        sections.append(("model_train", models, t.get("speedups", {})))
    for kind, rows, ratios in sections:
        base = rows.get("torchvision")
        lines.append(f"\n### {kind}\n")
        lines.append("| contender | img/s | median ms | min-max ms | warm-up s | vs torchvision (per-round min-max) |")
        lines.append("|---|---|---|---|---|---|")
        for name, v in rows.items():
            spread = (f"{v['min_s'] * 1e3:.2f}-{v['max_s'] * 1e3:.2f}" if "min_s" in v and "max_s" in v else "—")
            warm = f"{v['warmup_s']:.2f}" if "warmup_s" in v else "—"
            if name in ratios:
                r = ratios[name]
                vs = f"{r['median']:.3f}x ({r['min']:.3f}-{r['max']:.3f}x)"
                speedups.setdefault(kind, {})[name] = r["median"]
            elif base and name != "torchvision":
                vs = f"{base['median_s'] / v['median_s']:.3f}x"
                speedups.setdefault(kind, {})[name] = base["median_s"] / v["median_s"]
            else:
                vs = "—"
            img = v.get("img_per_s", b.get("batch_size", 0) / v["median_s"])
            lines.append(f"| {name} | {img:.1f} | {v['median_s'] * 1e3:.2f} | {spread} | {warm} | {vs} |")
    return head, "\n".join(lines), speedups


def plot(speedups: dict, path: Path, baselines: dict = BASELINES) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    kinds = [k for k in speedups if speedups[k]]
    if not kinds:
        return False
    fig, axes = plt.subplots(len(kinds), 1, figsize=(12, 1.2 + 0.32 * sum(len(speedups[k]) for k in kinds)),
                             squeeze=False)
    for ax, kind in zip(axes[:, 0], kinds):
        names = list(speedups[kind])
        vals = [speedups[kind][n] for n in names]
        ax.barh(range(len(names)), vals, color=["tab:green" if v >= 1 else "tab:red" for v in vals])
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.axvline(1.0, color="black", lw=0.8)
        ax.invert_yaxis()
        ax.set_xlabel(f"speedup of {OURS} over {baselines.get(kind, 'baseline')} (higher is better)")
        ax.set_title(kind)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


DEFAULT_STEM = "benchmark-report"


def output_paths(text: str) -> tuple[Path, Path]:
    """--out as (STEM.md, STEM.png): a directory (existing, or written with a trailing slash) gets
    DIR/benchmark-report.*; a given .md or .png suffix is the stem's own, any other dot stays in the name."""
    if not text:
        raise UserError("--out: empty path (expected an output path stem, e.g. --out results/report)")
    out = Path(text)
    if text.endswith(("/", os.sep)) or out.is_dir() or out.name in ("", ".", ".."):
        out = out / DEFAULT_STEM
    if out.suffix in (".md", ".png"):
        out = out.with_suffix("")
    return out.with_name(out.name + ".md"), out.with_name(out.name + ".png")


def run(args) -> int:
    rep = load(args.results)
    md_path, png_path = output_paths(args.out)  # checked writable before anything is written
    parent = md_path.parent
    if parent.exists() and not parent.is_dir():
        raise UserError(f"--out {args.out}: {parent} is not a directory")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {args.out}: cannot create {parent} ({e.strerror or type(e).__name__})") from None
    for path in (md_path, png_path):
        check_writable(str(path), "--out")
    if rep["format"] == "bench":
        try:
            head, body, speedups = bench_tables(rep["bench"])
        except (KeyError, TypeError, ValueError, AttributeError, ZeroDivisionError) as e:
            raise UserError(f"{args.results}: a bench file whose tables are malformed ({type(e).__name__}: "
                            f"{e}); {EXPECTED}") from None
        baselines = {k: "torchvision" for k in speedups}
    else:
        (body, speedups), head, baselines = tables(rep), header(rep), BASELINES
    md = f"# resnet_ext benchmark report\n\n{head}\n{body}\n"
    md_path.write_text(md)
    wrote_png = plot(speedups, png_path, baselines)
    print(md)
    print(f"wrote {md_path}" + (f" and {png_path}" if wrote_png else " (no PNG: matplotlib is not installed)"))
    return 0


def main(args) -> int:
    try:
        return run(args)
    except UserError as e:
        print(f"python -m resnet_ext report: error: {e}", file=sys.stderr)
        return 2


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", help="pytest-benchmark JSON (--benchmark-json) or python -m resnet_ext bench --json "
                   "output")
    p.add_argument("--out", default=DEFAULT_STEM, help="output path stem: STEM.md and STEM.png (a directory: "
                   f"DIR/{DEFAULT_STEM}.*)")
