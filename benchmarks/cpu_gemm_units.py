"""The CPU default mode's 1x1 GEMM units: each resnet50 1x1 conv shape at batch 1 and 8 (channels_last input, 2
threads) as the stock convolution (oneDNN, reordering the weight on every call), as oneDNN's matmul on the plain
weight (`mkldnn._linear_pointwise`, what `engine.cpu.gemm_unit` runs for fp32) and as torch.mm (MKL's sgemm, what it ran
before); whether `cpu.gemm_pays` picks the GEMM, and the matmul's largest difference from the convolution
relative to the largest output. Usage: python benchmarks/cpu_gemm_units.py"""
import statistics

import torch
import torch.nn.functional as F
import torch.utils.benchmark as tb
import torchvision


def shapes_1x1() -> set:
    """(input channels, height, width), output channels, stride of every resnet50 1x1 conv at 224x224."""
    found = set()

    def hook(mod, inp, out):
        if mod.kernel_size == (1, 1):
            found.add((tuple(inp[0].shape[1:]), mod.out_channels, mod.stride[0]))

    m = torchvision.models.resnet50()
    for mod in m.modules():
        if isinstance(mod, torch.nn.Conv2d):
            mod.register_forward_hook(hook)
    with torch.no_grad():
        m(torch.randn(1, 3, 224, 224))
    return found


def main() -> None:
    torch.set_num_threads(2)
    shapes = sorted(shapes_1x1(), key=lambda t: (-t[0][1], t[0][0]))
    for bs in (1, 8):
        for (c, h, w), k, s in shapes:
            x = torch.randn(bs, c, h, w).contiguous(memory_format=torch.channels_last)
            weight = torch.randn(k, c, 1, 1)

            def rows():
                xs = x[:, :, ::s, ::s] if s > 1 else x
                return xs.permute(0, 2, 3, 1).reshape(-1, c)

            fns = {"conv": lambda: F.conv2d(x, weight, stride=s),
                   "onednn matmul": lambda: torch.ops.mkldnn._linear_pointwise(rows(), weight.view(k, c), None,
                                                                               "none", [], ""),
                   "mm": lambda: torch.mm(rows(), weight.view(k, c).t())}
            ref = fns["conv"]().permute(0, 2, 3, 1).reshape(-1, k)
            diff = ((fns["onednn matmul"]() - ref).abs().max() / ref.abs().max()).item()
            t = {name: [] for name in fns}
            for _ in range(3):  # interleaved
                for name, f in fns.items():
                    t[name].append(tb.Timer("f()", globals={"f": f}, num_threads=2)
                                   .blocked_autorange(min_run_time=0.2).median)
            t = {name: statistics.median(v) for name, v in t.items()}
            pixels = bs * (-(-h // s)) * (-(-w // s))
            print(f"batch {bs} {c}x{h}x{w} -> {k} stride {s}: conv {t['conv'] * 1e3:.3f} ms, onednn matmul "
                  f"{t['onednn matmul'] * 1e3:.3f} ms, mm {t['mm'] * 1e3:.3f} ms; conv / matmul "
                  f"{t['conv'] / t['onednn matmul']:.2f}, mm / matmul {t['mm'] / t['onednn matmul']:.2f}; "
                  f"gemm_pays {c >= 2 * pixels}; matmul vs conv {diff:.1e}", flush=True)


if __name__ == "__main__":
    main()
