"""Per layer: resnet_ext's frozen resnet50 against a CPU runtime's own per-node profile, conv by conv in forward
order (channels_last input, 224x224, 2 threads). `--peer ort`: fp32 frozen against ONNX Runtime fp32 (its
profiler); `--peer openvino-bf16`: `freeze(dtype=torch.bfloat16)` against OpenVINO bf16 (its PERF_COUNT). Ours are
torch.profiler's per-op times (CPU total per call, so ATen's cost per call is in them); the peers' are their node
times. Each side's non-conv nodes are listed after. Usage: python benchmarks/cpu_peer_layers.py [--peer ort]
[--batch N] [--rounds N]"""
import argparse
import json
import os
import tempfile
import warnings

import torch
import torchvision
from torch.profiler import ProfilerActivity, profile

import resnet_ext


def ours_per_op(model, x, rounds: int) -> list:
    """[(op name, input shapes, mean us per call)] of the forward's top-level ops, in order."""
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as p:
            for _ in range(rounds):
                model(x)
    top = [e for e in p.events() if e.cpu_parent is None]
    n = len(top) // rounds
    ops = [[e.name, e.input_shapes[:2] if e.input_shapes else None, 0.0] for e in top[:n]]
    for i, e in enumerate(top[:n * rounds]):
        ops[i % n][2] += e.cpu_time_total / rounds
    return ops


def ort_per_node(path: str, x, rounds: int) -> list:
    import onnxruntime as ort
    d = tempfile.mkdtemp()
    o = ort.SessionOptions()
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    o.intra_op_num_threads, o.inter_op_num_threads = torch.get_num_threads(), 1
    o.enable_profiling, o.profile_file_prefix = True, os.path.join(d, "prof")
    s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
    xn = x.contiguous().numpy()
    for _ in range(3 + rounds):
        s.run(None, {"x": xn})
    with open(s.end_profiling()) as f:
        events = [e for e in json.load(f) if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    events = events[-(len(events) // (3 + rounds)) * rounds:]  # the last `rounds` runs: after the warm-up
    nodes = {}
    for e in events:
        name = e["name"][:-len("_kernel_time")]
        rec = nodes.setdefault(name, [e["args"].get("op_name"), 0.0, 0])
        rec[1] += e["dur"]
        rec[2] += 1
    return [(name, op, total / count) for name, (op, total, count) in nodes.items()]


def openvino_per_node(path: str, x, rounds: int) -> list:
    import openvino as ov
    core = ov.Core()
    c = core.compile_model(core.read_model(path), "CPU", {
        "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": torch.get_num_threads(),
        "INFERENCE_PRECISION_HINT": "bf16", "PERF_COUNT": True})
    r = c.create_infer_request()
    xn = x.contiguous().numpy()
    for _ in range(3):
        r.infer({0: xn})
    sums = {}
    for _ in range(rounds):
        r.infer({0: xn})
        for p in r.profiling_info:
            rec = sums.setdefault(p.node_name, [p.node_type, 0.0])
            rec[1] += p.real_time.total_seconds() * 1e6 / rounds
    return [(name, op, us) for name, (op, us) in sums.items() if us > 0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--peer", choices=["ort", "openvino-bf16"], default="ort")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rounds", type=int, default=10)
    args = p.parse_args()
    torch.manual_seed(0)
    tv = torchvision.models.resnet50().eval()
    x = torch.randn(args.batch, 3, 224, 224)
    path = os.path.join(tempfile.mkdtemp(), "resnet50.onnx")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(tv, (x,), path, input_names=["x"], output_names=["y"], dynamo=False)
    bf16 = args.peer == "openvino-bf16"
    peer = (openvino_per_node if bf16 else ort_per_node)(path, x, args.rounds)
    model = resnet_ext.resnet50()
    model.load_state_dict(tv.state_dict())
    model = resnet_ext.freeze(model.eval().to(memory_format=torch.channels_last),
                              dtype=torch.bfloat16 if bf16 else None)
    ours = ours_per_op(model, x.contiguous(memory_format=torch.channels_last), args.rounds)
    our_convs = [o for o in ours if any(n in o[0] for n in ("convolution", "winograd", "conv1x1"))]
    peer_convs = [q for q in peer if q[1] in ("Conv", "FusedConv", "Convolution")]
    print(f"resnet50 batch {args.batch}, {'bf16 vs OpenVINO bf16' if bf16 else 'fp32 vs ONNX Runtime'}, "
          f"{torch.get_num_threads()} threads; us per call")
    for o, q in zip(our_convs, peer_convs):
        print(f"{o[0].split('::')[-1]:24s} {str(o[1]):48s} ours {o[2]:7.0f}  peer {q[2]:7.0f} ({q[1]})  "
              f"ours / peer {o[2] / q[2]:.2f}")
    print(f"convs: ours {sum(o[2] for o in our_convs):.0f} us ({len(our_convs)}), peer "
          f"{sum(q[2] for q in peer_convs):.0f} us ({len(peer_convs)})")
    print("ours, other ops:", [(o[0], round(o[2])) for o in ours if o not in our_convs])
    print("peer, other nodes:", [(q[1], round(q[2])) for q in peer if q not in peer_convs])


if __name__ == "__main__":
    main()
