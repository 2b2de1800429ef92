"""Is the CPU default mode ever slower than torchvision? (the brief: no default path slower than the stock one it
replaces). Every builder family at batch 1 and 8, NCHW and channels_last inputs, the model as constructed or
converted to channels_last, fp32 and a bf16 model (`model.to(torch.bfloat16)`), eval forwards under no_grad, and a
train-mode forward + backward: torchvision and resnet_ext on the same weights, interleaved rounds in one process,
torchvision / default per round (median and range), and whether the outputs are bitwise equal.
Usage: python benchmarks/cpu_default_sweep.py [--archs resnet18,resnet50] [--rounds 7] [--sizes 224] [--batches 1,8]
[--no-train]   (2 threads)."""
import argparse
import statistics

import torch
import torchvision

import resnet_ext
from resnet_ext.cli import time_interleaved

ARCHS = "resnet18,resnet34,resnet50,resnet101,resnext50_32x4d,wide_resnet50_2"


def pair(arch: str, dtype: torch.dtype, cl_model: bool):
    tv = getattr(torchvision.models, arch)().eval()
    ours = getattr(resnet_ext, arch)().eval()
    # Non-trivial BN statistics, as a trained model has them.
    for m in tv.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.0)
            m.bias.data.uniform_(-0.1, 0.1)
    ours.load_state_dict(tv.state_dict())
    fmt = torch.channels_last if cl_model else torch.contiguous_format
    return tv.to(dtype=dtype, memory_format=fmt), ours.to(dtype=dtype, memory_format=fmt)


def report(label: str, times: dict, same) -> float:
    r = [a / b for a, b in zip(times["tv"], times["ours"])]
    med = statistics.median(r)
    flag = "  <-- slower" if med < 1.0 else ""
    print(f"{label}: torchvision {statistics.median(times['tv']) * 1e3:.1f} ms, default "
          f"{statistics.median(times['ours']) * 1e3:.1f} ms, torchvision / default {med:.3f}x "
          f"({min(r):.2f}-{max(r):.2f}); bitwise {same}{flag}", flush=True)
    return med


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--archs", default=ARCHS)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--sizes", default="224", help="input heights (= widths), comma-separated")
    ap.add_argument("--no-train", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, {torch.get_num_threads()} threads, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    worst = []
    for arch in a.archs.split(","):
        for dtype in (torch.float32, torch.bfloat16):
            for cl_model in (False, True):
                tv, ours = pair(arch, dtype, cl_model)
                for bs, size in ((b, z) for b in map(int, a.batches.split(",")) for z in map(int, a.sizes.split(","))):
                    for cl_in in (False, True):
                        x = torch.randn(bs, 3, size, size, dtype=dtype)
                        if cl_in:
                            x = x.contiguous(memory_format=torch.channels_last)
                        with torch.no_grad():
                            times, _ = time_interleaved({"tv": tv, "ours": ours}, x, a.rounds, {"tv": 2, "ours": 2})
                            same = torch.equal(tv(x), ours(x))
                        label = (f"{arch} {str(dtype)[6:]} model {'CL' if cl_model else 'NCHW'}, batch {bs} "
                                 f"{size}x{size} {'CL' if cl_in else 'NCHW'} input, eval")
                        worst.append((report(label, times, same), label))
        if a.no_train:
            continue
        tv, ours = pair(arch, torch.float32, False)
        tv.train(), ours.train()
        x = torch.randn(8, 3, 224, 224)

        def step(m):
            def f(x):
                m.zero_grad(set_to_none=True)
                m(x).sum().backward()
            return f
        times, _ = time_interleaved({"tv": step(tv), "ours": step(ours)}, x, max(3, a.rounds // 2),
                                    {"tv": 1, "ours": 1})
        worst.append((report(f"{arch} fp32 batch 8 NCHW, train forward + backward", times, "n/a"),
                      f"{arch} train"))
    worst.sort()
    print("slowest five (torchvision / default):", "; ".join(f"{lbl} {m:.3f}x" for m, lbl in worst[:5]))


if __name__ == "__main__":
    main()
