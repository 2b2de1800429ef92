"""oneDNN's own execution time of each convolution primitive inside the frozen bf16 resnet50 forward at batch 1
(ONEDNN_VERBOSE; the primitives ATen's _convolution_pointwise runs: the 3x3 stride-2 convs and layer 4's 3x3), to
compare with the same conv's profiled op time (cpu_ov_layers.py) and OpenVINO's node time.
Usage: ONEDNN_VERBOSE=1 PYTHONPATH=. python benchmarks/results/2026-12-05-cpu-bench-settled/onednn_verbose.py"""
import torch
import torchvision

import resnet_ext

torch.set_num_threads(2)
m = resnet_ext.freeze(resnet_ext.from_torchvision(torchvision.models.resnet50().eval()), dtype=torch.bfloat16)
x = torch.randn(1, 3, 224, 224).contiguous(memory_format=torch.channels_last)
with torch.inference_mode():
    for _ in range(5):
        m(x)
    print("---- three forwards ----", flush=True)
    for _ in range(3):
        m(x)
