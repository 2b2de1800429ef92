"""Where a 16-bit resnet eval forward loses accuracy, emulated on the CPU (fp32 arithmetic on 16-bit-rounded
operands, rounding to 16 bits where the GPU kernels store): torchvision's conv -> BN (two roundings per unit)
against BN folded into the weights (resnet_ext: the folded weight and bias rounded to 16 bits, one rounding of
the output), the fold with an fp32 bias, and the BN scale applied in an fp32 epilogue instead (no folded weight),
with the shift in fp32 or rounded to 16 bits.
Prints each one's error against the fp32 forward, max-abs and norm, and as a multiple of torchvision's.

    python benchmarks/fold_precision.py {fp16,bf16} {resnet50,resnet101,...}

The model gets random weights and randomized BN statistics (as tests/test_cuda.py), is rounded to the 16-bit
dtype first (as users convert it), and runs 8 random 224x224 images.
"""
import argparse

import torch
import torch.nn.functional as F
import torchvision

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("dtype", choices=["fp16", "bf16"])
ap.add_argument("arch", choices=[a for a in ("resnet50", "resnet101", "resnet152")])
a = ap.parse_args()
torch.manual_seed(0)
dt = torch.float16 if a.dtype == "fp16" else torch.bfloat16
arch = a.arch


def r16(t):
    return t.to(dt).float()


tv = getattr(torchvision.models, arch)().eval()
g = torch.Generator().manual_seed(0)
for m in tv.modules():  # the statistics tests/conftest.py's randomize_bn gives
    if isinstance(m, torch.nn.BatchNorm2d):
        c = m.num_features
        m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
        m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
        m.weight.data.copy_(torch.rand(c, generator=g) * 0.5 + 0.5)
        m.bias.data.copy_(torch.rand(c, generator=g) * 0.2 - 0.1)
# the model converted to 16 bits first (as users do): every parameter and buffer rounded
for p in list(tv.parameters()) + list(tv.buffers()):
    if p.is_floating_point():
        p.data.copy_(r16(p.data))
x = r16(torch.randn(8, 3, 224, 224))


def unit(conv, bn, x, mode, res=None, relu=True):
    W = conv.weight
    args = (conv.stride, conv.padding, conv.dilation, conv.groups)
    s = (bn.running_var + bn.eps).rsqrt() * bn.weight
    shift = bn.bias - bn.running_mean * s
    if mode == "fp32":
        z = F.conv2d(x, W, None, *args) * s.view(-1,1,1) + shift.view(-1,1,1)
    elif mode == "tv":
        y = r16(F.conv2d(x, W, None, *args))
        z = r16(F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0., bn.eps))
    elif mode == "ours":
        z = F.conv2d(x, r16(W * s.view(-1,1,1,1)), r16(shift), *args)
    elif mode == "ours32b":
        z = F.conv2d(x, r16(W * s.view(-1,1,1,1)), shift, *args)
    elif mode == "scale_epi":
        z = F.conv2d(x, W, None, *args) * s.view(-1,1,1) + shift.view(-1,1,1)
    elif mode == "scale_epi16":  # the fp32 scale in the epilogue, the shift stored in 16 bits (a 16-bit bias operand)
        z = F.conv2d(x, W, None, *args) * s.view(-1,1,1) + r16(shift).view(-1,1,1)
    if res is not None:
        z = z + res if mode in ("fp32",) else (r16(z) + res if mode == "tv" else z + res)
    if relu: z = F.relu(z)
    return z if mode == "fp32" else r16(z)


def forward(mode):
    with torch.no_grad():
        h = unit(tv.conv1, tv.bn1, x, mode)
        h = F.max_pool2d(h, 3, 2, 1)
        for layer in (tv.layer1, tv.layer2, tv.layer3, tv.layer4):
            for b in layer:
                idt = h if b.downsample is None else unit(b.downsample[0], b.downsample[1], h, mode, relu=False)
                o = unit(b.conv1, b.bn1, h, mode)
                o = unit(b.conv2, b.bn2, o, mode)
                h = unit(b.conv3, b.bn3, o, mode, res=idt)
        h = torch.flatten(F.adaptive_avg_pool2d(h, 1), 1)
        out = F.linear(h, tv.fc.weight, tv.fc.bias)
        return out if mode == "fp32" else r16(out)


ref = forward("fp32")
err = lambda a: ((a - ref).abs().max() / ref.abs().max()).item()
nrm = lambda a: ((a - ref).norm() / ref.norm()).item()
res = {m: forward(m) for m in ("tv", "ours", "ours32b", "scale_epi", "scale_epi16")}
for m, o in res.items():
    print(f"{dt} {arch} {m:10s} max {err(o):.3e} ({err(o)/err(res['tv']):.3f}x tv)  norm {nrm(o):.3e} ({nrm(o)/nrm(res['tv']):.3f}x tv)")
