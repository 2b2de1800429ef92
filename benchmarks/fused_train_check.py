"""GPU check of the fused training decomposition (`resnet_ext.fused_train`, #23; experimental build):

1. engines: for every graph a resnet50/101 train step needs (`shapes.fused_train_graphs`) at batch 256, in bf16 and
   fp16, whether cuDNN builds a plan on this GPU (`cudnn_graph_probe`), and why not where it does not;
2. per block (the first two blocks of each resnet50 layer, batch 256, bf16 AMP, channels_last): the fused block's
   output and gradients against an fp32 reference, judged against torchvision's own bf16 error, then forward +
   backward timed against torchvision's block (torch.utils.benchmark), with the paths that ran;
one verdict line per item. The whole train step is `bench --train --fused-train` (gpu_check.sh's fusedtrain step).
Usage: python benchmarks/fused_train_check.py [--batch-size N]   (CUDA, RESNET_EXT_EXPERIMENTAL=1 build)."""
import argparse
import copy

import torch
import torchvision
from torch import nn
from torch.utils import benchmark

import resnet_ext
from resnet_ext import _C
from resnet_ext.shapes import fused_train_graphs

# (inplanes, planes, stride, downsample, input H=W) of resnet50's layers' first and second blocks.
BLOCKS = [(64, 64, 1, True, 56), (256, 64, 1, False, 56), (256, 128, 2, True, 56), (512, 128, 1, False, 28),
          (512, 256, 2, True, 28), (1024, 256, 1, False, 14), (1024, 512, 2, True, 14), (2048, 512, 1, False, 7)]


def engines(n):
    graphs = list(dict.fromkeys(fused_train_graphs("resnet50", n) + fused_train_graphs("resnet101", n)))
    for dtype in ("bfloat16", "float16"):
        missing = [(g, why) for g in graphs if (why := _C.cudnn_graph_probe(*g, dtype, True))]
        for g, why in missing:
            print(f"  no graph: {dtype} {g[0]} x={g[1]} w={g[2]} stride={g[3]} prologue={g[5]}: {why[:200]}")
        print(f"verdict fusedtrain-engines {dtype}: cuDNN builds {len(graphs) - len(missing)} of {len(graphs)} "
              f"resnet50/101 graphs (batch {n})")


def block_pair(inplanes, planes, stride, downsample):
    torch.manual_seed(0)

    def ds(mod):
        return nn.Sequential(mod.conv1x1(inplanes, planes * 4, stride), nn.BatchNorm2d(planes * 4)) \
            if downsample else None
    tv = torchvision.models.resnet.Bottleneck(inplanes, planes, stride, ds(torchvision.models.resnet))
    ours = resnet_ext.Bottleneck(inplanes, planes, stride, ds(resnet_ext.models))
    ours.load_state_dict(tv.state_dict())
    return tv.cuda().train(), ours.cuda().train()


def step(model, x, g, amp=True):
    x = x.detach().requires_grad_()
    for p in model.parameters():
        p.grad = None
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        y = model(x)
    y.backward(g.to(y.dtype))
    return y, x.grad, model.conv2.weight.grad


def blocks(n):
    ratios = []
    for blk in BLOCKS:
        inplanes, planes, stride, downsample, hw = blk
        tv, ours = block_pair(inplanes, planes, stride, downsample)
        ref = copy.deepcopy(tv)
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        x = torch.randn(n, inplanes, hw, hw, device="cuda").contiguous(memory_format=torch.channels_last)
        out_hw = (hw - 1) // stride + 1
        g = torch.randn(n, planes * 4, out_hw, out_hw, device="cuda").contiguous(memory_format=torch.channels_last)
        r = step(ref, x, g, amp=False)
        t = step(tv, x, g)
        resnet_ext.reset_path_counts()
        resnet_ext.fused_train(True)
        try:
            o = step(ours, x, g)
        finally:
            resnet_ext.fused_train(False)
        counts = {k: v for k, v in resnet_ext.path_counts().items() if "graph" in k}
        name = f"{inplanes}-{planes}-s{stride}{'-ds' if downsample else ''} n{n}"
        errs = []
        for what, a, b, c in zip(("out", "dx", "dw2"), o, t, r):
            e_o = ((a.float() - c.float()).norm() / c.float().norm()).item()
            e_t = ((b.float() - c.float()).norm() / c.float().norm()).item()
            errs.append((what, e_o, e_t))
        bad = [f"{w} {eo:.2e} vs torchvision {et:.2e}" for w, eo, et in errs if not eo <= 2 * et + 1e-6]
        if bad or any(torch.isnan(a).any() for a in o):
            print(f"verdict fusedtrain-block {name}: WRONG ({'; '.join(bad) or 'NaN'}); paths {counts}")
            continue
        torch.backends.cudnn.allow_tf32 = True
        times = {}
        for label, model, fused in (("ours", ours, True), ("tv", tv, False)):
            def run(model=model, fused=fused):
                prev = resnet_ext.fused_train(fused)
                try:
                    step(model, x, g)
                finally:
                    resnet_ext.fused_train(prev)
            times[label] = benchmark.Timer("run()", globals={"run": run}).blocked_autorange(min_run_time=0.5).median
        ratio = times["tv"] / times["ours"]
        ratios.append(ratio)
        print(f"verdict fusedtrain-block {name}: {'faster' if ratio > 1 else 'SLOWER'} by "
              f"{max(ratio, 1 / ratio):.2f}x fwd+bwd ({times['ours'] * 1e3:.3f} vs torchvision "
              f"{times['tv'] * 1e3:.3f} ms); error out/dx/dw2 "
              f"{'/'.join(f'{eo / max(et, 1e-12):.2f}' for _, eo, et in errs)}x torchvision's bf16; paths {counts}")
    if ratios:
        geo = torch.tensor(ratios).log().mean().exp().item()
        print(f"verdict fusedtrain-blocks: geomean {geo:.2f}x torchvision over {len(ratios)} blocks (fwd+bwd, "
              f"bf16 AMP, batch {n})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=256)
    args = p.parse_args()
    if not (torch.cuda.is_available() and hasattr(_C, "cudnn_graph_probe")):
        raise SystemExit("fused_train_check.py needs a CUDA device and a RESNET_EXT_EXPERIMENTAL=1 build")
    engines(args.batch_size)
    blocks(args.batch_size)


if __name__ == "__main__":
    main()
