"""The default mode against torchvision on the CPU, by torch.profiler: the ops that take the time (self CPU time
over N forwards, after two warm-up forwards), model as constructed, input in the given layout.
Usage: python benchmarks/cpu_default_profile.py [ARCH] [BATCH] [cl|nchw] [N]   (2 threads; idle machine)."""
import sys

import torch
import torchvision
from torch.profiler import ProfilerActivity, profile

import resnet_ext


def main() -> None:
    torch.set_num_threads(2)
    arch = sys.argv[1] if len(sys.argv) > 1 else "resnet101"
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    layout = sys.argv[3] if len(sys.argv) > 3 else "cl"
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    tv = getattr(torchvision.models, arch)().eval()
    models = {"default": resnet_ext.from_torchvision(tv).eval(), "torchvision": tv}
    x = torch.randn(batch, 3, 224, 224)
    if layout == "cl":
        x = x.contiguous(memory_format=torch.channels_last)
    print(f"torch {torch.__version__}, {arch}, batch {batch}, {layout}, {n} forwards")
    for name, model in models.items():
        with torch.inference_mode():
            for _ in range(2):
                model(x)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(n):
                    model(x)
        print(name)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=45))


if __name__ == "__main__":
    main()
