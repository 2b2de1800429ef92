"""The frozen CPU mode after a change of batch size: two frozen resnet50s with the same weights, one that ran only
batch B and one that ran batch A first, timed on batch B in interleaved rounds (channels_last, 224x224, 2 threads),
for fp32 and bf16 and (A, B) in (1, 2), (1, 8), (8, 1). A ratio above 1 means the forward is slower for having
seen another batch size first (before the prepacked weights were keyed by the batch size: a weight packed for
batch A is reordered on every call of batch B where oneDNN picks another format for B).
Usage: python benchmarks/cpu_batch_switch.py [--rounds N]"""
import argparse
import statistics

import torch
import torch.utils.benchmark as tb
import torchvision

import resnet_ext


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    torch.manual_seed(0)
    tv = torchvision.models.resnet50().eval()
    for dtype in (None, torch.bfloat16):
        for a, b in ((1, 2), (1, 8), (8, 1)):
            models = []
            for _ in range(2):
                m = resnet_ext.resnet50()
                m.load_state_dict(tv.state_dict())
                models.append(resnet_ext.freeze(m.eval().to(memory_format=torch.channels_last), dtype=dtype))
            only_b, a_then_b = models
            xa, xb = (torch.randn(n, 3, 224, 224).contiguous(memory_format=torch.channels_last) for n in (a, b))
            times = {"only B": [], "A then B": []}
            with torch.inference_mode():
                a_then_b(xa)
                for m in models:
                    m(xb)
                for _ in range(args.rounds):
                    for name, m in (("only B", only_b), ("A then B", a_then_b)):
                        times[name].append(tb.Timer("m(x)", globals={"m": m, "x": xb}, num_threads=torch.get_num_threads())
                                           .timeit(1 if b > 1 else 3).median)
            ratio = [t / o for t, o in zip(times["A then B"], times["only B"])]
            print(f"{'bf16' if dtype else 'fp32'} A={a} B={b}: only B {statistics.median(times['only B']) * 1e3:.1f} ms, "
                  f"A then B {statistics.median(times['A then B']) * 1e3:.1f} ms; (A then B) / (only B) "
                  f"{statistics.median(ratio):.2f} ({min(ratio):.2f}-{max(ratio):.2f})", flush=True)


if __name__ == "__main__":
    main()
