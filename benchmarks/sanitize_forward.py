"""A small resnet50 eval forward on CUDA (bf16, batch 2, channels_last) through the fused kernels, for
`compute-sanitizer --tool memcheck` (benchmarks/gpu_check.sh runs it)."""
import torch

import resnet_ext

torch.manual_seed(0)
model = resnet_ext.resnet50().cuda().to(torch.bfloat16).eval()
x = torch.randn(2, 3, 224, 224, device="cuda", dtype=torch.bfloat16)
resnet_ext.reset_path_counts()
with torch.inference_mode():
    y = model(x)
torch.cuda.synchronize()
assert torch.isfinite(y.float()).all()
print("paths:", resnet_ext.path_counts())
