"""GPU check of `switches.unfolded_bn` (#24 item 2; experimental build): BN applied as an fp32 scale and shift on the
conv's sum over the unfolded 16-bit weight, each unit one cuDNN graph (conv + scale + shift (+ residual) (+ ReLU)),
against today's plan on folded weights (weight * scale rounded to 16 bits; cuDNN's fused conv+bias+ReLU).

1. Accuracy: resnet50/101 in fp16 and bf16 (random weights, BN statistics randomized as tests/conftest.py does,
   the model converted to 16 bits, 8 images at 224x224), the frozen forward through the CUDA plan with and
   without the switch, each one's error against torchvision's fp32 forward as a multiple of torchvision's own
   16-bit error (max-abs and norm); #24's bound: 1.25x max-abs, 1.1x by norm.
2. Per layer: every resnet50 conv at batch 256 (bf16): conv_bn_act on the unfolded weight with scale and shift
   (the graph) against conv_bn_act on the folded weight (the default choice); the first call's time (the graph's
   plan being built) reported apart.
3. Whole model, resnet50 bf16 at batch 32 and 256, through the plan (`on_cuda`), interleaved rounds: frozen and
   default mode, each with and without the switch (the default mode folds no weight per forward with it).
One verdict line each. Usage: python benchmarks/unfolded_check.py   (CUDA, experimental build)."""
import copy
import math
import time

import torch
import torchvision
from torch.utils import benchmark

import resnet_ext
from resnet_ext import switches
from resnet_ext.shapes import conv_shapes, norm_err, rel_err

CL = torch.channels_last


def randomized(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    tv = getattr(torchvision.models, arch)().eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.rand(c, generator=g) * 0.2 - 0.1)
    return tv.cuda()


def with_switches(on_cuda: bool, unfolded: bool):
    switches.on_cuda(on_cuda)
    switches.unfolded_bn(unfolded)


def accuracy() -> None:
    for arch in ("resnet50", "resnet101"):
        tv = randomized(arch)
        for dtype in (torch.float16, torch.bfloat16):
            tv16 = copy.deepcopy(tv).to(dtype).to(memory_format=CL)
            ours = resnet_ext.from_torchvision(copy.deepcopy(tv16)).eval()
            resnet_ext.freeze(ours)
            x = torch.randn(8, 3, 224, 224, device="cuda").to(dtype).contiguous(memory_format=CL)
            with torch.no_grad():
                ref = tv(x.float())
                tv_out = tv16(x).float()
                with_switches(True, False)
                folded = ours(x).float()
                with_switches(True, True)
                resnet_ext.reset_path_counts()
                unfolded = ours(x).float()
                counts = resnet_ext.path_counts()
            with_switches(False, False)
            base_max, base_norm = rel_err(tv_out, ref), norm_err(tv_out, ref)
            u_max, u_norm = rel_err(unfolded, ref) / base_max, norm_err(unfolded, ref) / base_norm
            f_max, f_norm = rel_err(folded, ref) / base_max, norm_err(folded, ref) / base_norm
            ok = u_max <= 1.25 and u_norm <= 1.1
            name = f"{arch} {str(dtype).replace('torch.', '')}"
            print(f"verdict unfolded_bn accuracy {name}: {u_max:.2f}x torchvision's own error max-abs, {u_norm:.2f}x "
                  f"by norm (folded plan: {f_max:.2f}x, {f_norm:.2f}x): {'within' if ok else 'OUTSIDE'} #24's "
                  f"1.25x / 1.1x; graphs ran {counts.get('cudnn_graph:cuda', 0)}, stock {counts.get('stock:cuda', 0)}")


def layers() -> None:
    ratios, worst, build = [], None, []
    for s in conv_shapes("resnet50", 256):
        x, w, b, r = s.inputs(torch.bfloat16, seed=s.C + s.K)
        scale = torch.rand(s.K, device="cuda") + 0.5
        shift = torch.randn(s.K, device="cuda") * 0.2
        folded = (w.float() * scale.view(-1, 1, 1, 1)).to(w.dtype).contiguous(memory_format=CL)
        relu = s.relu or s.residual
        args = (r, s.stride, s.padding, 1, relu)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        resnet_ext.reset_path_counts()
        resnet_ext.conv_bn_act(x, w, None, *args, scale=scale, shift=shift)
        torch.cuda.synchronize()
        build.append(time.perf_counter() - t0)
        if "cudnn_graph:cuda" not in resnet_ext.path_counts():
            print(f"verdict unfolded_bn layer {s.name}: no graph ({resnet_ext.path_counts()})")
            continue
        g = {"cba": resnet_ext.conv_bn_act, "x": x, "w": w, "f": folded, "b": shift.to(w.dtype), "a": args,
             "sc": scale, "sh": shift}
        t_graph = benchmark.Timer("cba(x, w, None, *a, scale=sc, shift=sh)", globals=g).blocked_autorange(
            min_run_time=0.2).median
        t_fold = benchmark.Timer("cba(x, f, b, *a)", globals=g).blocked_autorange(min_run_time=0.2).median
        ratio = t_fold / t_graph
        ratios.append(ratio)
        if worst is None or ratio < worst[0]:
            worst = (ratio, s.name, t_graph, t_fold)
    if ratios:
        geo = math.exp(sum(map(math.log, ratios)) / len(ratios))
        print(f"verdict unfolded_bn layers resnet50 bf16 n256: the graph is {geo:.2f}x the folded default choice "
              f"(geomean over {len(ratios)} convs; worst {worst[0]:.2f}x on {worst[1]}: {worst[2] * 1e3:.3f} vs "
              f"{worst[3] * 1e3:.3f} ms); first calls (plan build) {min(build):.2f}-{max(build):.2f} s")


def whole_model() -> None:
    model = resnet_ext.resnet50().cuda().eval().to(torch.bfloat16).to(memory_format=CL)
    for n in (32, 256):
        x = torch.randn(n, 3, 224, 224, device="cuda").to(torch.bfloat16).contiguous(memory_format=CL)
        for mode in ("default", "frozen"):
            if mode == "frozen":
                resnet_ext.freeze(model)
            else:
                resnet_ext.unfreeze(model)

            def forward(unfolded):
                with_switches(True, unfolded)
                return model(x)

            t = {False: [], True: []}
            with torch.no_grad():
                forward(True), forward(False)  # plans built, folds made
                for _ in range(3):
                    for k in t:
                        t[k].append(benchmark.Timer("f(k)", globals={"f": forward, "k": k}).blocked_autorange(
                            min_run_time=0.3).median)
            with_switches(False, False)
            rounds = [a / b for a, b in zip(t[False], t[True])]
            print(f"verdict unfolded_bn resnet50 bf16 n{n} {mode}: {min(t[True]) * 1e3:.3f} ms with, "
                  f"{min(t[False]) * 1e3:.3f} ms without: {min(t[False]) / min(t[True]):.2f}x (rounds "
                  f"{min(rounds):.2f}-{max(rounds):.2f}x)")


if __name__ == "__main__":
    accuracy()
    layers()
    whole_model()
