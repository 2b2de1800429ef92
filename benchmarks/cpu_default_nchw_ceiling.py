"""How fast can the default mode be on an NCHW input at batch 1 while it keeps torchvision's convolutions (their bits,
which torchvision's FX test holds it to: engine/cpu.py, internal_layout)? Against torchvision's forward, per round:
  convs only   torchvision's modules with BN, ReLU and the residual adds taken out (Identity): the same convolutions,
               everything around them free but the modules' Python -- the ceiling of any epilogue fusion in Python;
  convs, TorchScript  the same traced by torch.jit.trace (the convolutions called without Python between them);
  blocked      the convolutions on oneDNN's blocked tensors end to end (`to_mkldnn`, weights reordered once): the
               same convolution kernels (their outputs bitwise equal, checked per conv), no reorder of maps or
               weights between them; BN, ReLU, add and max pool as oneDNN's ops on those tensors (not torchvision's
               bits: shown for the time the reorders take, not as a candidate);
  default      resnet_ext's default mode (bitwise torchvision here, checked before and after the timings);
  "+ reuse"    the same inside resnet_ext's reused memory (engine/cpu.py, reused_memory: the default mode's forwards
               run inside it at 224x224; fresh blocks of 64 KiB and more cost a page fault per 4 KiB on first touch,
               and whether torchvision's own forward pays them depends on glibc's state in the process).
torchvision / contender per round (rotated interleaved rounds, torch.utils.benchmark), median and range, and each
contender's minor page faults per call (getrusage over 5 calls after the rounds).
Usage: python benchmarks/cpu_default_nchw_ceiling.py [ROUNDS] [ARCH ...]   (2 threads; idle machine)."""
import copy
import resource
import statistics
import sys

import torch
import torchvision
from torch.utils.benchmark import Timer

import resnet_ext
from resnet_ext.engine import cpu


class ConvsOnly(torch.nn.Module):
    """torchvision's forward without BN, ReLU and the residual adds: the same convolutions (the downsamples' outputs
    returned with the logits, so that a trace keeps them), the max pool and the head."""

    def __init__(self, tv: torch.nn.Module):
        super().__init__()
        self.tv = tv

    def forward(self, x):
        tv, kept = self.tv, []
        x = tv.maxpool(tv.conv1(x))
        for layer in (tv.layer1, tv.layer2, tv.layer3, tv.layer4):
            for blk in layer:
                out = blk.conv2(blk.conv1(x))
                if hasattr(blk, "conv3"):
                    out = blk.conv3(out)
                if blk.downsample is not None:
                    kept.append(blk.downsample[0](x))
                x = out
        return (tv.fc(torch.flatten(tv.avgpool(x), 1)), *kept)


def blocked(tv: torch.nn.Module, x: torch.Tensor):
    packed = {c: torch._C._nn.mkldnn_reorder_conv2d_weight(c.weight.to_mkldnn(), c.padding, c.stride, c.dilation,
                                                           c.groups)
              for c in tv.modules() if isinstance(c, torch.nn.Conv2d)}
    same = []

    def conv(c, t):
        out = torch.mkldnn_convolution(t, packed[c], None, c.padding, c.stride, c.dilation, c.groups)
        if check:
            same.append(torch.equal(out.to_dense(), torch.nn.functional.conv2d(t.to_dense(), c.weight, None, c.stride,
                                                                               c.padding, c.dilation, c.groups)))
        return out

    def bn(b, t):
        return torch.batch_norm(t, b.weight, b.bias, b.running_mean, b.running_var, False, 0.0, b.eps, False)

    def block(blk, t):
        out = torch.relu(bn(blk.bn1, conv(blk.conv1, t)))
        if hasattr(blk, "conv3"):
            out = bn(blk.bn3, conv(blk.conv3, torch.relu(bn(blk.bn2, conv(blk.conv2, out)))))
        else:
            out = bn(blk.bn2, conv(blk.conv2, out))
        idt = t if blk.downsample is None else bn(blk.downsample[1], conv(blk.downsample[0], t))
        return torch.relu(out + idt)

    def forward(inp):
        t = torch.max_pool2d(torch.relu(bn(tv.bn1, conv(tv.conv1, inp.to_mkldnn()))), 3, 2, 1)
        for layer in (tv.layer1, tv.layer2, tv.layer3, tv.layer4):
            for blk in layer:
                t = block(blk, t)
        return tv.fc(torch.flatten(tv.avgpool(t.to_dense()), 1))
    check = True
    forward(x)
    check = False
    return forward, all(same), len(same)


def reusing(m):
    def forward(x):
        with cpu.reused_memory(True):
            return m(x)
    return forward


def faults(f, x, calls=5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        f(x)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls


def main() -> None:
    torch.set_num_threads(2)
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    for arch in sys.argv[2:] or ["resnet50", "resnet101"]:
        torch.manual_seed(0)
        tv = getattr(torchvision.models, arch)().eval()
        for m in tv.modules():  # BN statistics as a trained model has them
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1), m.running_var.uniform_(0.5, 1.5)
                m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.1, 0.1)
        x = torch.randn(1, 3, 224, 224)
        with torch.no_grad():
            fwd, same, n = blocked(tv, x)
            ours = resnet_ext.from_torchvision(copy.deepcopy(tv))
            free = ConvsOnly(tv)
            contenders = {"torchvision + reuse": reusing(tv), "convs only": free, "convs only + reuse": reusing(free),
                          "convs, TorchScript": torch.jit.trace(free, x), "blocked": fwd, "default": ours}
            traced = contenders["convs, TorchScript"]
            print(f"{arch}, NCHW 1x3x224x224, fp32, torch {torch.__version__}: default bitwise torchvision "
                  f"{torch.equal(ours(x), tv(x))}; blocked convs bitwise ATen's {same} ({n} convs); traced convs "
                  f"bitwise the modules' {all(map(torch.equal, traced(x), free(x)))}")
            ratios = {k: [] for k in contenders}
            order = [("torchvision", tv)] + list(contenders.items())
            for r in range(rounds):
                t = {}
                for k, m in order[r % len(order):] + order[:r % len(order)]:
                    t[k] = Timer("m(x)", globals={"m": m, "x": x}, num_threads=2).blocked_autorange(
                        min_run_time=1).median
                for k in contenders:
                    ratios[k].append(t["torchvision"] / t[k])
            resnet_ext.reset_path_counts()
            pf = {k: faults(m, x) for k, m in order}
            print(f"  after the rounds: default bitwise torchvision {torch.equal(ours(x), tv(x))}, its paths "
                  f"{resnet_ext.path_counts()}")
        print(f"  {'torchvision':<37} page faults per call {pf['torchvision']:.0f}")
        for k, v in ratios.items():
            print(f"  torchvision / {k:<22} median {statistics.median(v):.3f} ({min(v):.3f}-{max(v):.3f}), "
                  f"{rounds} rounds; page faults per call {pf[k]:.0f}")


if __name__ == "__main__":
    main()
