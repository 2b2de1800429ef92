"""Does a contender's place in an interleaved round move its time? Two identical resnet_ext default-mode models (A,
B) and torchvision, channels_last, 2 threads: rounds in a fixed order (torchvision, A, B) and rotated
(`time_interleaved`'s default since 2026-12-04); B / A per round, median (range): 1.00 if the place does not matter.
Usage: python benchmarks/interleave_position.py"""
import statistics

import torch
import torchvision

import resnet_ext
from resnet_ext.cli import time_interleaved


def main() -> None:
    torch.set_num_threads(2)
    for dtype, bs in ((torch.bfloat16, 1), (torch.float32, 1), (torch.bfloat16, 8)):
        tv = torchvision.models.resnet50().eval()
        a, b = resnet_ext.resnet50().eval(), resnet_ext.resnet50().eval()
        a.load_state_dict(tv.state_dict()), b.load_state_dict(tv.state_dict())
        for m in (tv, a, b):
            m.to(dtype=dtype, memory_format=torch.channels_last)
        x = torch.randn(bs, 3, 224, 224, dtype=dtype).contiguous(memory_format=torch.channels_last)
        for rotate in (False, True, False, True):
            with torch.no_grad():
                t, _ = time_interleaved({"tv": tv, "A": a, "B": b}, x, 12 if bs == 1 else 6, {"tv": 2, "A": 2, "B": 2},
                                        rotate=rotate)
            r = [q / p for p, q in zip(t["A"], t["B"])]
            print(f"resnet50 {str(dtype)[6:]} batch {bs}, {'rotated' if rotate else 'fixed order tv, A, B'}: "
                  f"B / A {statistics.median(r):.3f} ({min(r):.2f}-{max(r):.2f}); ms tv "
                  f"{statistics.median(t['tv']) * 1e3:.2f} A {statistics.median(t['A']) * 1e3:.2f} "
                  f"B {statistics.median(t['B']) * 1e3:.2f}", flush=True)


if __name__ == "__main__":
    main()
