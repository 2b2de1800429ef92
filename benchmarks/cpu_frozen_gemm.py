"""The frozen mode's stride-1 1x1 convs as oneDNN's matmul instead of its convolution: each resnet50 1x1 shape at
batch 1 and 8 (channels_last, 2 threads), fp32 and bf16, in its role in the block: head (bias, ReLU), downsample
(bias) and tail (bias, residual add, ReLU). Contenders, interleaved: the convolution on its prepacked weight
(`_convolution_pointwise`, what the frozen plan runs), the matmul on a weight prepacked for it
(`_linear_pointwise` after `_reorder_linear_weight`; a tail adds the residual in oneDNN's binary post-op, then
ReLU in place) and the matmul on the plain weight. Prints each one's median time, conv / matmul and the matmul's
largest difference from the convolution relative to the largest output.
Usage: python benchmarks/cpu_frozen_gemm.py [--rounds N]"""
import argparse
import statistics

import torch
import torch.utils.benchmark as tb
import torchvision


def units_1x1() -> list:
    """[(input (C, H, W), output channels, role)] of resnet50's stride-1 1x1 convs at 224x224, once each."""
    found = []
    m = torchvision.models.resnet50()
    for name, mod in m.named_modules():
        if isinstance(mod, torch.nn.Conv2d) and mod.kernel_size == (1, 1) and mod.stride == (1, 1):
            role = "downsample" if "downsample" in name else ("tail" if name.endswith("conv3") else "head")

            def hook(mod, inp, out, role=role):
                key = (tuple(inp[0].shape[1:]), mod.out_channels, role)
                if key not in found:
                    found.append(key)
            mod.register_forward_hook(hook)
    with torch.no_grad():
        m(torch.randn(1, 3, 224, 224))
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(2)
    threads = torch.get_num_threads()
    for dtype in (torch.float32, torch.bfloat16):
        for bs in (1, 8):
            for (c, h, w), k, role in units_1x1():
                x = torch.randn(bs, c, h, w).to(dtype).contiguous(memory_format=torch.channels_last)
                weight = (torch.randn(k, c, 1, 1) / c ** 0.5).to(dtype)
                bias = torch.randn(k).to(dtype)
                res = torch.randn(bs, k, h, w).to(dtype).contiguous(memory_format=torch.channels_last)
                geom = ([0, 0], [1, 1], [1, 1], 1)
                wconv = torch.ops.mkldnn._reorder_convolution_weight(weight, *geom, list(x.shape))
                wlin = torch.ops.mkldnn._reorder_linear_weight(weight.view(k, c), bs * h * w)
                rows = x.permute(0, 2, 3, 1).reshape(-1, c)
                res_rows = res.permute(0, 2, 3, 1).reshape(-1, k)
                act = "relu" if role == "head" else "none"

                def conv():
                    if role == "tail":
                        return torch.ops.mkldnn._convolution_pointwise_.binary(
                            res.clone(), x, wconv, bias, *geom, "add", 1.0, "relu", [], "")
                    return torch.ops.mkldnn._convolution_pointwise(x, wconv, bias, *geom, act, [], "")

                def matmul(wm):
                    def f():
                        if role == "tail":
                            res.clone()  # the same copy as the conv's, which writes into the residual
                            out = torch.ops.mkldnn._linear_pointwise.binary(rows, res_rows, wm, bias, "add")
                            out.relu_()
                        else:
                            out = torch.ops.mkldnn._linear_pointwise(rows, wm, bias, act, [], "")
                        return out.view(bs, h, w, k).permute(0, 3, 1, 2)
                    return f

                fns = {"conv": conv, "matmul packed": matmul(wlin), "matmul plain": matmul(weight.view(k, c))}
                with torch.inference_mode():
                    ref = conv().float()
                    diff = max(((f().float() - ref).abs().max() / ref.abs().max()).item()
                               for n, f in fns.items() if n != "conv")
                    t = {name: [] for name in fns}
                    for _ in range(args.rounds):
                        for name, f in fns.items():
                            t[name].append(tb.Timer("f()", globals={"f": f}, num_threads=threads)
                                           .blocked_autorange(min_run_time=0.2).median)
                med = {name: statistics.median(v) for name, v in t.items()}
                print(f"{str(dtype)[6:]} batch {bs} {c}x{h}x{w} -> {k} {role}: " + ", ".join(
                    f"{n} {v * 1e6:.0f} us" for n, v in med.items())
                    + f"; conv / packed {med['conv'] / med['matmul packed']:.2f}, conv / plain "
                    f"{med['conv'] / med['matmul plain']:.2f}; max diff {diff:.1e}", flush=True)


if __name__ == "__main__":
    main()
