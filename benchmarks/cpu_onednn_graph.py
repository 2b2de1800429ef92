"""The frozen CPU mode as one oneDNN Graph per input shape (`engine.onednn_graph`) against its per-unit plan
(`switches.cpu_onednn_graph(False)`: one ATen oneDNN call per conv, Winograd 3x3 convs where they pay), on the same
frozen model, in interleaved rounds: resnet50 and resnet101, fp32 and `freeze(dtype=torch.bfloat16)`, batch 1, 2,
4 and 8 at 224x224, channels_last and NCHW. Prints each one's median, the per-round ratio plan / graph (median and
range), the first call's seconds and each one's largest error against torchvision in float64 relative to the
largest logit. Usage: python benchmarks/cpu_onednn_graph.py [--rounds N] [--arch resnet50,resnet101]
[--batch 1,2,4,8]"""
import argparse
import statistics
import time

import torch
import torch.utils.benchmark as tb
import torchvision

import resnet_ext
from resnet_ext import switches
from resnet_ext.engine import onednn_graph


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--arch", default="resnet50,resnet101")
    p.add_argument("--batch", default="1,2,4,8")
    args = p.parse_args()
    threads = torch.get_num_threads()
    onednn_graph.FP32_PIXELS = float("inf")  # time the graph at every size, also where fp32 leaves it to the plan
    print(f"torch {torch.__version__}, {threads} threads")
    for arch in args.arch.split(","):
        torch.manual_seed(0)
        tv = getattr(torchvision.models, arch)().eval()
        with torch.no_grad():
            for m in tv.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.1, 0.1)
                    m.running_var.uniform_(0.5, 1.5)
        tv64 = getattr(torchvision.models, arch)().double().eval()
        tv64.load_state_dict(tv.state_dict())
        for dtype in (None, torch.bfloat16):
            for cl in (True, False):
                model = getattr(resnet_ext, arch)()
                model.load_state_dict(tv.state_dict())
                model = model.eval().to(memory_format=torch.channels_last if cl else torch.contiguous_format)
                model = resnet_ext.freeze(model, dtype=dtype)
                for batch in (int(b) for b in args.batch.split(",")):
                    x = torch.randn(batch, 3, 224, 224)
                    if cl:
                        x = x.contiguous(memory_format=torch.channels_last)
                    first, err = {}, {}
                    with torch.inference_mode():
                        ref = tv64(x.double())
                        for name, on in (("plan", False), ("graph", True)):
                            switches.cpu_onednn_graph(on)
                            resnet_ext.reset_path_counts()
                            t0 = time.perf_counter()
                            y = model(x)
                            first[name] = time.perf_counter() - t0
                            counts = resnet_ext.path_counts()
                            assert ("onednn_graph" in counts) == (name == "graph"), counts
                            err[name] = ((y.double() - ref).abs().max() / ref.abs().max()).item()
                        times = {"plan": [], "graph": []}
                        for _ in range(args.rounds):
                            for name, on in (("plan", False), ("graph", True)):
                                switches.cpu_onednn_graph(on)
                                times[name].append(tb.Timer("m(x)", globals={"m": model, "x": x}, num_threads=threads)
                                                   .timeit(1 if batch > 2 else 3).median)
                    switches.cpu_onednn_graph(True)
                    r = [a / b for a, b in zip(times["plan"], times["graph"])]
                    print(f"{arch} {'bf16' if dtype else 'fp32'} {'channels_last' if cl else 'NCHW'} batch {batch}: "
                          f"plan {statistics.median(times['plan']) * 1e3:.1f} ms, graph "
                          f"{statistics.median(times['graph']) * 1e3:.1f} ms; plan / graph {statistics.median(r):.3f} "
                          f"({min(r):.2f}-{max(r):.2f}); first call plan {first['plan']:.2f} s, graph "
                          f"{first['graph']:.2f} s; error plan {err['plan']:.1e}, graph {err['graph']:.1e}", flush=True)


if __name__ == "__main__":
    main()
