"""`python -m resnet_ext report RESULTS.json`: pytest-benchmark JSON -> a markdown table per benchmark kind
(shape, each implementation's time, speedups, % of roofline) and a PNG bar chart of speedup per layer."""
from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

BASELINES = {"conv_bn_act": "stock", "bn_act_train": "stock", "model_eval": "torchvision_cl",
             "model_train": "torchvision_cl"}
OURS = "resnet_ext"


def load(path: str) -> dict:
    """{kind: {group: {impl: record}}} with per-call seconds (pytest-benchmark stats / inner launches)."""
    data = json.loads(Path(path).read_text())
    out: dict = defaultdict(lambda: defaultdict(dict))
    for b in data.get("benchmarks", []):
        info = b.get("extra_info", {})
        if "impl" not in info:
            continue
        inner = info.get("inner", 1)
        rec = dict(info)
        rec["median_s"] = b["stats"]["median"] / inner
        rec["min_s"] = b["stats"]["min"] / inner
        out[info["kind"]][b["group"] or info.get("shape")][info["impl"]] = rec
    return {"machine": data.get("machine_info", {}), "commit": data.get("commit_info", {}),
            "datetime": data.get("datetime"), "results": out}


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


def plot(speedups: dict, path: Path) -> bool:
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
        ax.set_xlabel(f"speedup of {OURS} over {BASELINES.get(kind, 'baseline')} (higher is better)")
        ax.set_title(kind)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(args) -> int:
    rep = load(args.results)
    body, speedups = tables(rep)
    md = f"# resnet_ext benchmark report\n\n{header(rep)}\n{body}\n"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(md)
    wrote_png = plot(speedups, out.with_suffix(".png"))
    print(md)
    print(f"wrote {out.with_suffix('.md')}" + (f" and {out.with_suffix('.png')}" if wrote_png else
                                               " (no PNG: matplotlib is not installed)"))
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", help="pytest-benchmark JSON (--benchmark-json)")
    p.add_argument("--out", default="benchmark-report", help="output path stem: STEM.md and STEM.png")
