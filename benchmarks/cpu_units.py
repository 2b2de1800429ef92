"""Per-unit CPU timings behind resnet_ext's CPU choices (resnet_ext/engine/cpu.py: gemm_pays; the frozen mode's packing):
for every resnet50 conv + BN + ReLU shape, the median time of
  eager    torchvision's ops: conv (oneDNN reorders the plain weight on every call), BN, ReLU;
  fold     BN folded into the weight now, then one oneDNN convolution with fused ReLU (plain weight);
  gemm     1x1 convs: one GEMM on the conv's own weight, BN and ReLU on the output (3x3: unfold + GEMM);
  packed   the frozen mode: folded and prepacked once, one oneDNN convolution.
Usage: python benchmarks/cpu_units.py [cl|nchw] [batch]   (2 threads, fp32; run on an otherwise idle machine)."""
import statistics
import sys

import torch
import torch.nn.functional as F

from resnet_ext.cli import time_interleaved

SHAPES = [  # in channels, input size, out channels, kernel, stride: every distinct resnet50 unit
    (64, 56, 64, 1, 1), (64, 56, 64, 3, 1), (64, 56, 256, 1, 1), (256, 56, 64, 1, 1), (256, 56, 128, 1, 1),
    (128, 56, 128, 3, 2), (128, 28, 512, 1, 1), (256, 56, 512, 1, 2), (512, 28, 128, 1, 1), (128, 28, 128, 3, 1),
    (512, 28, 256, 1, 1), (256, 28, 256, 3, 2), (256, 14, 1024, 1, 1), (512, 28, 1024, 1, 2), (1024, 14, 256, 1, 1),
    (256, 14, 256, 3, 1), (1024, 14, 512, 1, 1), (512, 14, 512, 3, 2), (512, 7, 2048, 1, 1), (1024, 14, 2048, 1, 2),
    (2048, 7, 512, 1, 1), (512, 7, 512, 3, 1)]


def main(cl: bool, bs: int) -> None:
    torch.set_num_threads(2)
    pw = torch.ops.mkldnn._convolution_pointwise.default
    fmt = torch.channels_last if cl else torch.contiguous_format
    print(f"{'channels_last' if cl else 'NCHW'}, batch {bs}: C H K k s | eager | fold | "
          f"gemm | packed (us) | gemm max err")
    with torch.no_grad():
        for c, h, k, r, s in SHAPES:
            x = torch.randn(bs, c, h, h).contiguous(memory_format=fmt)
            conv = torch.nn.Conv2d(c, k, r, s, r // 2, bias=False).to(memory_format=fmt)
            bn = torch.nn.BatchNorm2d(k).eval()
            bn.running_var.uniform_(0.5, 2)
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            shift = bn.bias - bn.running_mean * scale
            pad = [r // 2] * 2
            ho = (h + 2 * (r // 2) - r) // s + 1

            def eager():
                return torch.relu_(bn(conv(x)))

            def fold():
                wf = torch.mul(conv.weight, scale.view(-1, 1, 1, 1), out=torch.empty_like(conv.weight))
                return pw(x, wf, shift, pad, [s, s], [1, 1], 1, "relu", [], "")

            def gemm():
                w = conv.weight.reshape(k, -1) if r == 1 else conv.weight.contiguous().view(k, -1)
                if r == 1:
                    xs = x[:, :, ::s, ::s]
                    if cl:
                        out = torch.mm(xs.permute(0, 2, 3, 1).reshape(-1, c), w.t())
                        return out.mul_(scale).add_(shift).relu_().view(bs, ho, ho, k).permute(0, 3, 1, 2)
                    out = torch.matmul(w, xs.reshape(bs, c, ho * ho))
                    return out.mul_(scale.view(-1, 1)).add_(shift.view(-1, 1)).relu_().view(bs, k, ho, ho)
                cols = F.unfold(x, r, padding=r // 2, stride=s)
                if cl:
                    out = torch.matmul(cols.transpose(1, 2), w.t())
                    return out.mul_(scale).add_(shift).relu_().view(bs, ho, ho, k).permute(0, 3, 1, 2)
                out = torch.matmul(w, cols)
                return out.mul_(scale.view(-1, 1)).add_(shift.view(-1, 1)).relu_().view(bs, k, ho, ho)

            wf = torch.mul(conv.weight, scale.view(-1, 1, 1, 1), out=torch.empty_like(conv.weight))
            wp = torch.ops.mkldnn._reorder_convolution_weight(wf, pad, [s, s], [1, 1], 1, list(x.shape))

            def packed():
                return pw(x, wp, shift, pad, [s, s], [1, 1], 1, "relu", [], "")

            err = (gemm() - eager()).abs().max().item()
            fns = {"eager": eager, "fold": fold, "gemm": gemm, "packed": packed}
            times, _ = time_interleaved({n: (lambda _x, f=f: f()) for n, f in fns.items()}, None, 15,
                                        {n: 3 for n in fns})
            us = {n: statistics.median(t) * 1e6 for n, t in times.items()}
            print(f"{c} {h} {k} {r} {s} | {us['eager']:7.0f} | {us['fold']:7.0f} | {us['gemm']:7.0f} "
                  f"| {us['packed']:7.0f} | {err:.1e}")


if __name__ == "__main__":
    main(len(sys.argv) < 2 or sys.argv[1] == "cl", int(sys.argv[2]) if len(sys.argv) > 2 else 1)
