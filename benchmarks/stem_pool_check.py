"""GPU check of resnet_ext's fused stem op (resnet_ext::stem_pool, #24 item 1; experimental build): resnet50's stem
(conv 7x7/2 over 3 channels + BN + ReLU + max pool 3x3/2, 224x224) at batch 1, 32 and 256 in bf16 and fp16,
channels_last: first against an fp32 reference (judged against torch's own 16-bit stem), then timed
(torch.utils.benchmark) against the frozen mode's stem today (conv_bn_act on the folded weight, then the max pool)
and torchvision's modules (conv, BN, ReLU, max pool) in eval; one verdict line per shape. #24's goal: <= 0.35 ms at
batch 256. Then the frozen resnet50 forward through the CUDA plan (`switches.on_cuda`) with and without
`switches.fused_stem`, interleaved, at batch 32 and 256 in bf16: one verdict line each.
Usage: python benchmarks/stem_pool_check.py   (CUDA)."""
import torch
import torch.nn.functional as F
import torchvision
from torch.utils import benchmark

import resnet_ext
from resnet_ext import switches
from resnet_ext.shapes import rel_err

CL = torch.channels_last


def main() -> None:
    tv = torchvision.models.resnet50().cuda().eval()
    with torch.no_grad():
        tv.bn1.running_mean.uniform_(-0.5, 0.5)
        tv.bn1.running_var.uniform_(0.5, 2.0)
    stem = torch.nn.Sequential(tv.conv1, tv.bn1, tv.relu, tv.maxpool)
    bn = tv.bn1
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().float()
    shift = (bn.bias - bn.running_mean * scale).detach().float()
    for dtype in (torch.bfloat16, torch.float16):
        stem16 = stem.to(dtype).to(memory_format=CL)
        w = tv.conv1.weight.detach().to(dtype).contiguous(memory_format=CL)
        wf, bf = resnet_ext.fold_bn(tv.conv1, tv.bn1)
        wf, bf = wf.to(dtype).contiguous(memory_format=CL), bf.to(dtype)
        for n in (1, 32, 256):
            x = torch.randn(n, 3, 224, 224, device="cuda").to(dtype).contiguous(memory_format=CL)
            name = f"{str(dtype).replace('torch.', '')} n{n}"
            with torch.no_grad():
                y = torch.ops.resnet_ext.stem_pool(x, w, scale, shift)
                ref = F.max_pool2d(torch.relu(F.conv2d(x.float(), w.float(), None, 2, 3) * scale.view(1, -1, 1, 1)
                                              + shift.view(1, -1, 1, 1)), 3, 2, 1)
                ours_err = ((y.float() - ref).abs().max() / ref.abs().max()).item()
                tv_err = ((stem16(x).float() - ref).abs().max() / ref.abs().max()).item()
            if not (torch.isfinite(y.float()).all() and ours_err <= 1.25 * tv_err + 1e-3):
                print(f"verdict stem_pool {name}: WRONG (rel err {ours_err:.2e}, torchvision's {tv_err:.2e})")
                continue
            timers = {
                "ours": benchmark.Timer("op(x, w, s, b)", globals={"op": torch.ops.resnet_ext.stem_pool, "x": x,
                                                                    "w": w, "s": scale, "b": shift}),
                "frozen": benchmark.Timer("F.max_pool2d(cba(x, wf, bf, None, 2, 3), 3, 2, 1)",
                                          globals={"F": F, "cba": resnet_ext.conv_bn_act, "x": x, "wf": wf,
                                                   "bf": bf}),
                "tv": benchmark.Timer("stem(x)", globals={"stem": stem16, "x": x}),
            }
            with torch.no_grad():
                t = {k: v.blocked_autorange(min_run_time=0.3).median for k, v in timers.items()}
            goal = f"; goal <= 0.35 ms: {'met' if t['ours'] <= 0.35e-3 else 'missed'}" if n == 256 else ""
            print(f"verdict stem_pool {name}: {t['ours'] * 1e3:.3f} ms, {t['frozen'] / t['ours']:.2f}x the frozen "
                  f"mode's stem ({t['frozen'] * 1e3:.3f} ms), {t['tv'] / t['ours']:.2f}x torchvision's "
                  f"({t['tv'] * 1e3:.3f} ms); rel err {ours_err:.2e} (torchvision {tv_err:.2e}){goal}")

    model_check()


def model_check() -> None:
    model = resnet_ext.resnet50().cuda().eval().to(torch.bfloat16).to(memory_format=CL)
    resnet_ext.freeze(model)
    previous = switches.on_cuda(True), switches.fused_stem()

    def forward(fused, x):
        switches.fused_stem(fused)
        return model(x)

    try:
        for n in (32, 256):
            x = torch.randn(n, 3, 224, 224, device="cuda").to(torch.bfloat16).contiguous(memory_format=CL)
            with torch.no_grad():
                resnet_ext.reset_path_counts()
                fused = forward(True, x)
                counts = resnet_ext.path_counts()
                err = rel_err(fused.float(), forward(False, x).float())
                t = {True: [], False: []}
                for _ in range(3):  # interleaved rounds
                    for k in t:
                        t[k].append(benchmark.Timer("f(k, x)", globals={"f": forward, "k": k, "x": x})
                                    .blocked_autorange(min_run_time=0.3).median)
            if counts.get("stem_pool") != 1:
                print(f"verdict fused_stem resnet50 bf16 n{n}: NOT TAKEN (path counts {counts})")
                continue
            best = {k: min(v) for k, v in t.items()}
            rounds = [a / b for a, b in zip(t[False], t[True])]
            print(f"verdict fused_stem resnet50 bf16 n{n}: frozen forward {best[True] * 1e3:.3f} ms with, "
                  f"{best[False] * 1e3:.3f} ms without: {best[False] / best[True]:.2f}x (rounds {min(rounds):.2f}-"
                  f"{max(rounds):.2f}x); logits differ by {err:.2e} of the largest")
    finally:
        switches.on_cuda(previous[0])
        switches.fused_stem(previous[1])


if __name__ == "__main__":
    main()
