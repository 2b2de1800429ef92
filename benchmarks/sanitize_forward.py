"""resnet50 at batch 8 through every CUDA code path resnet_ext has, for `compute-sanitizer --tool memcheck`
(benchmarks/gpu_check.sh runs it): eval forwards (bf16, channels_last) with the default choice per layer and with
resnet_ext's own sm80 kernels on every layer (prefer_cudnn(False)); the fused stem op (stem_pool); AMP training
steps through the fused BN(+add)+ReLU kernels (with the verified and the opt-in BN kernels) and the fused
decomposition (fused_train); then eval forwards with each kind of sm_90a kernel forced where it can run (sm_90 only)."""
import torch
import torch.nn.functional as F

import resnet_ext
from resnet_ext._C_loader import _C

torch.manual_seed(0)
model = resnet_ext.resnet50().cuda().to(memory_format=torch.channels_last)
x = torch.randn(8, 3, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last)

sm90 = []
if torch.cuda.get_device_capability()[0] == 9:
    names = resnet_ext.build_info()["fused_kernels"]
    sm90 = [next(k for k in names if k.startswith(p)) for p in ("sm90_gemm_bf16_", "sm90_bf16_relu_")
            if any(k.startswith(p) for k in names)]


def eval_forward(label, cudnn, forced):
    model.eval().to(torch.bfloat16)
    resnet_ext.prefer_cudnn(cudnn)
    _C.force_kernel(forced)
    resnet_ext.reset_path_counts()
    try:
        with torch.inference_mode():
            y = model(x.to(torch.bfloat16))
        torch.cuda.synchronize()
    finally:
        _C.force_kernel("")
        resnet_ext.prefer_cudnn(True)
    assert torch.isfinite(y.float()).all(), label
    print(f"eval ({label}) paths:", resnet_ext.path_counts(), flush=True)


eval_forward("default", True, "")
eval_forward("sm80 everywhere", False, "")
# The fused stem op's kernel (#24, unverified) on the model's stem, bf16.
with torch.inference_mode():
    s = torch.ops.resnet_ext.stem_pool(x.to(torch.bfloat16), model.conv1.weight.to(torch.bfloat16).contiguous(
        memory_format=torch.channels_last), torch.ones(64, device="cuda"), torch.zeros(64, device="cuda"))
    torch.cuda.synchronize()
assert torch.isfinite(s.float()).all()
print("stem_pool ok", tuple(s.shape), flush=True)

# The training step before the unverified sm_90a kernels, so that a failure of theirs cannot hide it.
model.float().train()
resnet_ext.train_bn("fused")  # the models run the stock BN by default: force the fused op's kernels
for optin, fused in ((False, False), (True, False), (False, True)):
    # the verified training-BN kernels, the opt-in ones (unverified), the fused decomposition's cuDNN graphs and
    # finalize kernel (#23, unverified)
    resnet_ext.bn_optin(optin)
    resnet_ext.fused_train(fused)
    resnet_ext.reset_path_counts()
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = F.cross_entropy(model(x), torch.arange(8, device="cuda"))
    loss.backward()
    torch.cuda.synchronize()
    assert torch.isfinite(model.conv1.weight.grad).all()
    print(f"AMP train step ok (opt-in BN kernels {optin}, fused_train {fused}), loss", float(loss),
          {k: v for k, v in resnet_ext.path_counts().items() if "graph" in k}, flush=True)
resnet_ext.bn_optin(False)
resnet_ext.fused_train(False)
resnet_ext.train_bn("auto")

for k in sm90:
    eval_forward(f"forced {k}", False, k)
