"""Would F(4x4, 3x3) Winograd keep the frozen bf16 mode within torchvision's own bf16 error? An emulation in fp32 /
float64 of the frozen bf16 forward (BN folded in fp32, weights rounded to bf16, every conv's output rounded to bf16
after bias, residual and ReLU as resnet_ext's ops do; pool and fc in fp32), its 3x3 stride-1 convs computed as
Winograd with the transformed input and weight rounded to bf16 (the GEMM operands of `vdpbf16ps`), fp32 sums, and
the output transform in fp32: F(2x2, 3x3) (what ops.winograd3x3 runs in bf16 today, as a check of the emulation)
against F(4x4, 3x3) (what its fp32 path runs), against direct convolution, the real frozen bf16 model and
torchvision's bf16 model. Error: max |logits - float64| / max |float64 logits| (torchvision's weights, random, with
randomized BN statistics as the tests use), per seed.
Usage: python benchmarks/winograd_bf16_error.py [ARCH] [BATCH] [SEEDS] [SIZE]
       python benchmarks/winograd_bf16_error.py layers   (per layer: resnet50's 3x3 stride-1 shapes, batch 1)"""
import copy
import sys

import torch
import torch.nn.functional as F
import torchvision

import resnet_ext
from resnet_ext.engine import structure

F2 = dict(BT=[[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
          G=[[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]],
          AT=[[1, 1, 1, 0], [0, 1, -1, -1]])
F4 = dict(BT=[[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
              [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
          G=[[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
             [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
          AT=[[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]])


def bf16(t):
    return t.to(torch.bfloat16).float()


def winograd(x, w, mats):
    """3x3 stride-1 padding-1 conv of x (bf16 values in fp32) by w (bf16 values), operands rounded to bf16."""
    bt, g, at = (torch.tensor(mats[k], dtype=torch.float64) for k in ("BT", "G", "AT"))
    m, a = at.shape[0], bt.shape[0]
    n, c, h, wd = x.shape
    th, tw = -(-h // m), -(-wd // m)
    xp = F.pad(x, (1, tw * m + 1 - wd, 1, th * m + 1 - h))
    d = xp.unfold(2, a, m).unfold(3, a, m)  # N, C, TH, TW, a, a
    v = bf16(torch.einsum("ia,nctuab,jb->nctuij", bt.float(), d, bt.float()))  # fp32 transform, bf16 operand
    u = bf16(torch.einsum("ia,kcab,jb->kcij", g, w.double(), g))  # float64 transform, rounded once
    mm = torch.einsum("nctuij,kcij->nktuij", v, u)  # fp32 sums of exact products
    y = torch.einsum("pi,nktuij,qj->nktupq", at.float(), mm, at.float())
    return y.permute(0, 1, 2, 4, 3, 5).reshape(n, -1, th * m, tw * m)[:, :, :h, :wd]


def emulate(model, x, mode):
    """The frozen bf16 forward, 3x3 stride-1 convs as `mode` ("direct", F2 or F4)."""
    s = structure.of(model, torch.float32, x.shape[1])

    def unit(u, y, residual=None, relu=True):
        bn = u.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        w = bf16(u.conv.weight * scale.view(-1, 1, 1, 1))
        b = bn.bias - bn.running_mean * scale
        c = u.conv
        if mode != "direct" and c.kernel_size == (3, 3) and c.stride == (1, 1) and c.padding == (1, 1):
            out = winograd(y, w, mode) + b.view(1, -1, 1, 1)
        else:
            out = F.conv2d(y, w, b, c.stride, c.padding)
        if residual is not None:
            out = out + residual
        return bf16(out.relu() if relu else out)

    with torch.no_grad():
        y = model.maxpool(unit(s.stem, bf16(x)))
        for head, ds, tail in s.blocks:
            z = y
            for u in head:
                z = unit(u, z)
            r = y if ds is None else unit(ds, y, relu=False)
            y = unit(tail, z, r)
        return model.fc(torch.flatten(model.avgpool(y), 1))


def rel_err(y, ref):
    return ((y.double() - ref).abs().max() / ref.abs().max()).item()


def layers() -> None:
    """Per layer: relative error of the output's norm from float64, random bf16 inputs after ReLU, He-scaled bf16
    weights."""
    torch.manual_seed(0)
    print("C=K, map | direct, output rounded to bf16 | F(2x2) | F(4x4)")
    for c, h in ((64, 56), (128, 28), (256, 14), (512, 7)):
        x = bf16(torch.randn(1, c, h, h).relu())
        w = bf16(torch.randn(c, c, 3, 3) * (2 / (9 * c)) ** 0.5)
        ref = F.conv2d(x.double(), w.double(), padding=1)
        errs = [bf16(F.conv2d(x, w, padding=1)), winograd(x, w, F2), winograd(x, w, F4)]
        print(f"{c}, {h}x{h} | " + " | ".join(f"{((e.double() - ref).norm() / ref.norm()).item():.2e}" for e in errs))


def main() -> None:
    torch.set_num_threads(2)
    if len(sys.argv) > 1 and sys.argv[1] == "layers":
        return layers()
    arch = sys.argv[1] if len(sys.argv) > 1 else "resnet50"
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    seeds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    size = int(sys.argv[4]) if len(sys.argv) > 4 else 224
    print(f"torch {torch.__version__}, {arch}, batch {batch}, {size}x{size}: max |logits - float64| / max |float64|")
    print("seed | torchvision bf16 | frozen bf16 (real) | emulated: direct | F(2x2) | F(4x4)")
    for seed in range(seeds):
        torch.manual_seed(seed)
        tv = getattr(torchvision.models, arch)().eval()
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for mod in tv.modules():
                if isinstance(mod, torch.nn.BatchNorm2d):
                    k = mod.num_features
                    mod.running_mean.copy_(torch.rand(k, generator=g) - 0.5)
                    mod.running_var.copy_(torch.rand(k, generator=g) * 1.5 + 0.5)
                    mod.weight.copy_(torch.rand(k, generator=g) * 0.5 + 0.5)
                    mod.bias.copy_(torch.rand(k, generator=g) * 0.2 - 0.1)
        x = torch.randn(batch, 3, size, size, generator=g)
        with torch.no_grad():
            ref = copy.deepcopy(tv).double()(x.double())
            tv_err = rel_err(copy.deepcopy(tv).bfloat16()(x.bfloat16()), ref)
            ours = resnet_ext.freeze(resnet_ext.from_torchvision(copy.deepcopy(tv)), dtype=torch.bfloat16)
            real = rel_err(ours(x.contiguous(memory_format=torch.channels_last)), ref)
        model = resnet_ext.from_torchvision(copy.deepcopy(tv)).eval()
        errs = [rel_err(emulate(model, x, mode), ref) for mode in ("direct", F2, F4)]
        print(f"{seed} | {tv_err:.2e} | {real:.2e} | " + " | ".join(f"{e:.2e}" for e in errs), flush=True)


if __name__ == "__main__":
    main()
