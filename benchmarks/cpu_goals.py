"""#28's goals from `bench --json` rows (one file per model, batch and layout): per row the median ms per forward of
each contender, and the per-round medians (min-max) of the three goals' ratios: frozen fp32 over the fastest fp32
peer of that round (compile + freezing, ONNX Runtime, OpenVINO), frozen bf16 over OpenVINO's bf16, and the default
mode over torchvision. Markdown to stdout.
Usage: python benchmarks/cpu_goals.py ROW.json [ROW.json ...]"""
import json
import statistics
import sys

COLUMNS = ["torchvision", "resnet_ext", "resnet_ext frozen", "torchvision+compile", "onnxruntime", "openvino",
           "resnet_ext frozen bf16", "resnet_ext frozen bf16 graph", "openvino bf16"]
TITLES = ["torchvision", "default", "frozen", "compile + freezing", "ONNX Runtime", "OpenVINO", "frozen bf16",
          "frozen bf16, oneDNN Graph", "OpenVINO bf16"]
FP32_PEERS = {"torchvision+compile": "compile", "onnxruntime": "ORT", "openvino": "OpenVINO"}


def ratio(over, under):
    """Per round under / over (how many times faster `over` is): median, min, max."""
    r = [u / o for o, u in zip(over, under)]
    return statistics.median(r), min(r), max(r)


def main() -> None:
    rows, goals = [], []
    for path in sys.argv[1:]:
        d = json.load(open(path))
        e = d["eval"]
        name = f"{d['arch']}, {d['batch_size']}, {'channels_last' if d['channels_last'] else 'NCHW'}"
        rows.append(f"| {name} | " + " | ".join(f"{e[c]['median_s'] * 1e3:.1f}" if c in e else "-" for c in COLUMNS)
                    + " |")
        peers = [p for p in FP32_PEERS if p in e]
        fastest = [min(e[p]["times_s"][i] for p in peers) for i in range(d["iters"])]
        wins = [min(peers, key=lambda p: e[p]["times_s"][i]) for i in range(d["iters"])]
        most = max(wins.count(p) for p in peers)
        which = "/".join(FP32_PEERS[p] for p in peers if wins.count(p) == most)  # a tie names both
        bf16 = "resnet_ext frozen bf16" in e and "openvino bf16" in e  # not on a CPU without native bf16
        g = [ratio(e["resnet_ext frozen"]["times_s"], fastest),
             ratio(e["resnet_ext frozen bf16"]["times_s"], e["openvino bf16"]["times_s"]) if bf16 else None,
             ratio(e["resnet_ext"]["times_s"], e["torchvision"]["times_s"])]
        cell = lambda r: "-" if r is None else f"{r[0]:.3f} ({r[1]:.2f}-{r[2]:.2f})"
        goals.append(f"| {name} | {cell(g[0])} {which} | {cell(g[1])} | {cell(g[2])} |")
    print("| model, batch, layout | " + " | ".join(TITLES) + " |")
    print("|---" * (len(TITLES) + 1) + "|")
    print("\n".join(rows))
    print()
    print("| model, batch, layout | frozen / fastest fp32 peer (mostly) | frozen bf16 / OpenVINO bf16 | "
          "default / torchvision |")
    print("|---|---|---|---|")
    print("\n".join(goals))


if __name__ == "__main__":
    main()
