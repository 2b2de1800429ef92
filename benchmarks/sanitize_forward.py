"""A small resnet50 eval forward (bf16, batch 2, channels_last) through the fused inference kernels, and one AMP
training step through the fused BN+ReLU kernels, for `compute-sanitizer --tool memcheck`
(benchmarks/gpu_check.sh runs it)."""
import torch
import torch.nn.functional as F

import resnet_ext

torch.manual_seed(0)
model = resnet_ext.resnet50().cuda().to(memory_format=torch.channels_last)
x = torch.randn(2, 3, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last)

model.eval().to(torch.bfloat16)
resnet_ext.reset_path_counts()
with torch.inference_mode():
    y = model(x.to(torch.bfloat16))
torch.cuda.synchronize()
assert torch.isfinite(y.float()).all()
print("eval paths:", resnet_ext.path_counts())

model.float().train()
with torch.autocast("cuda", dtype=torch.bfloat16):
    loss = F.cross_entropy(model(x[:, :, :64, :64]), torch.tensor([1, 2], device="cuda"))
loss.backward()
torch.cuda.synchronize()
assert torch.isfinite(model.conv1.weight.grad).all()
print("train step ok, loss", float(loss))
