"""The default mode against torchvision with the model left as constructed (NCHW weights), for channels_last and
NCHW inputs: interleaved rounds in one process, median ratio and its spread (issue #28's default-mode goal).
Usage: python benchmarks/default_nchw_weights.py   (2 threads, resnet50 fp32 224x224, batch 1 and 8)."""
import statistics

import torch
import torchvision

import resnet_ext
from resnet_ext.cli import time_interleaved


def main() -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    tv = torchvision.models.resnet50().eval()
    ours = resnet_ext.resnet50().eval()
    ours.load_state_dict(tv.state_dict())
    for bs, rounds in ((1, 15), (8, 8)):
        for cl in (True, False):
            x = torch.randn(bs, 3, 224, 224)
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.no_grad():
                times, _ = time_interleaved({"tv": tv, "ours": ours}, x, rounds, {"tv": 2, "ours": 2})
                same = torch.equal(tv(x), ours(x))
            r = [a / b for a, b in zip(times["tv"], times["ours"])]
            print(f"batch {bs} {'channels_last' if cl else 'NCHW'} input, NCHW weights: torchvision "
                  f"{statistics.median(times['tv']) * 1e3:.1f} ms, default {statistics.median(times['ours']) * 1e3:.1f} "
                  f"ms, default / torchvision {statistics.median(r):.3f}x ({min(r):.2f}-{max(r):.2f}); bitwise {same}")


if __name__ == "__main__":
    main()
