"""Per conv, where OpenVINO's forward and resnet_ext's frozen forward differ: each conv unit's time in ours
(torch.profiler, the op's own event, as benchmarks/cpu_roofline.py) against the same conv's node in OpenVINO's
compiled model of torchvision's ONNX export (its per-node profiling, PERF_COUNT: the node's real time and the
kernel it chose), matched by module name; then the totals per kind of unit, and OpenVINO's non-conv nodes.
Usage: python benchmarks/cpu_ov_layers.py [ARCH] [BATCH] [bf16|fp32] [ROUNDS]   (2 threads; idle machine; the two
are profiled in alternating rounds and each conv's times are medians over the rounds' per-forward means)."""
import collections
import os
import statistics
import sys
import tempfile

import torch
import torchvision
from torch.profiler import ProfilerActivity, profile

import resnet_ext
from resnet_ext.engine import structure

from cpu_roofline import CONV_OPS, kind, run_order


def ours_per_unit(model, x, units, reps):
    """{unit index: us per forward} from one profiled batch of `reps` forwards."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(reps):
            model(x)
    convs = sorted((e for e in prof.events() if e.name in CONV_OPS), key=lambda e: e.time_range.start)
    assert len(convs) == reps * len(units), (len(convs), len(units))
    times = collections.defaultdict(float)
    ops = {}
    for i, e in enumerate(convs):
        times[i % len(units)] += e.cpu_time_total / reps
        ops[i % len(units)] = "oneDNN" if e.name.startswith("mkldnn") else e.name.split("::")[1]
    return times, ops


def ov_per_node(req, feed, reps):
    """{node name: (us per forward, exec type, node type)} from `reps` profiled inferences."""
    acc = collections.defaultdict(float)
    info = {}
    for _ in range(reps):
        req.infer({0: feed})
        for p in req.get_profiling_info():
            acc[p.node_name] += p.real_time.total_seconds() * 1e6 / reps
            info[p.node_name] = (p.exec_type, p.node_type)
    return {k: (v, *info[k]) for k, v in acc.items()}


def main() -> None:
    import openvino as ov
    torch.set_num_threads(2)
    arch = sys.argv[1] if len(sys.argv) > 1 else "resnet50"
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    bf16 = (sys.argv[3] if len(sys.argv) > 3 else "bf16") == "bf16"
    rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 5
    reps = 10 if batch == 1 else 3
    tv = getattr(torchvision.models, arch)().eval()
    x = torch.randn(batch, 3, 224, 224)
    path = os.path.join(tempfile.mkdtemp(prefix="resnet_ext_ov_layers_"), "model.onnx")
    with torch.no_grad():
        torch.onnx.export(tv, (x,), path, input_names=["x"], output_names=["y"], dynamo=False)
    compiled = ov.Core().compile_model(path, "CPU", {
        "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 2, "PERF_COUNT": True,
        "INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32"})
    req = compiled.create_infer_request()
    feed = x.numpy()
    model = resnet_ext.freeze(resnet_ext.from_torchvision(tv), dtype=torch.bfloat16 if bf16 else None)
    xc = x.contiguous(memory_format=torch.channels_last)
    units = list(run_order(structure.of(model, torch.float32, 3)))
    names = {m: n for n, m in model.named_modules()}
    ours_r, ov_r = [], []
    with torch.inference_mode():
        for _ in range(3):
            model(xc)
            req.infer({0: feed})
        for _ in range(rounds):
            ours_r.append(ours_per_unit(model, xc, units, reps))
            ov_r.append(ov_per_node(req, feed, reps))
    ov_nodes = ov_r[0]

    def ov_node(name):
        """The OpenVINO node of the conv module `name` (the ONNX exporter's '/layer1/layer1.0/conv1/Conv')."""
        parts = name.split(".")
        prefix = "/" + "/".join(parts[i - 1] + "." + p if p.isdigit() else p for i, p in enumerate(parts)) + "/"
        hits = [n for n in ov_nodes if n.startswith(prefix) and ov_nodes[n][2] == "Convolution"]
        return hits[0] if len(hits) == 1 else None

    print(f"torch {torch.__version__}, openvino {ov.__version__}, {arch} batch {batch} "
          f"{'bf16' if bf16 else 'fp32'}, 2 threads; medians over {rounds} rounds of {reps} forwards, us per forward")
    print(f"{'unit':<28} {'conv':<22} {'ours':>8} {'op':<12} {'OpenVINO':>8} {'kernel':<34} {'ours/OV':>7}")
    per_kind = collections.defaultdict(lambda: [0.0, 0.0])
    matched = set()
    for i, u in enumerate(units):
        name = names[u.conv]
        node = ov_node(name)
        ours = statistics.median(r[0][i] for r in ours_r)
        ovt = statistics.median(r[node][0] for r in ov_r) if node else float("nan")
        if node:
            matched.add(node)
        c = u.conv
        desc = f"{c.in_channels}->{c.out_channels} {c.kernel_size[0]}x{c.kernel_size[1]}/{c.stride[0]}"
        print(f"{name:<28} {desc:<22} {ours:8.0f} {ours_r[0][1][i]:<12} {ovt:8.0f} "
              f"{(ov_nodes[node][1] if node else '?'):<34} {ours / ovt:7.2f}")
        per_kind[kind(u)][0] += ours
        per_kind[kind(u)][1] += ovt
    print(f"{'kind':<28} {'ours ms':>8} {'OV ms':>8} {'ours/OV':>8}")
    for k, (a, b) in sorted(per_kind.items(), key=lambda kv: -kv[1][0]):
        print(f"{k:<28} {a / 1e3:8.2f} {b / 1e3:8.2f} {a / b:8.2f}")
    a, b = sum(v[0] for v in per_kind.values()), sum(v[1] for v in per_kind.values())
    print(f"{'all convs':<28} {a / 1e3:8.2f} {b / 1e3:8.2f} {a / b:8.2f}")
    rest = collections.defaultdict(float)
    for n in ov_nodes:
        if n not in matched:
            rest[ov_nodes[n][2] + " (" + ov_nodes[n][1] + ")"] += statistics.median(r[n][0] for r in ov_r)
    print("OpenVINO's other nodes, us per forward:")
    for k, v in sorted(rest.items(), key=lambda kv: -kv[1]):
        if v >= 1:
            print(f"  {k:<50} {v:8.0f}")


if __name__ == "__main__":
    main()
