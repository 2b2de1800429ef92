"""How fast can the default mode be on an NCHW input at batch 1 while it keeps torchvision's convolutions (their bits,
which torchvision's FX test holds it to: engine/cpu.py, internal_layout)? Against torchvision's forward, per round:
  convs only   torchvision's modules with BN, ReLU and the residual adds taken out (Identity): the same convolutions,
               everything around them free -- the ceiling of any epilogue fusion;
  blocked      the convolutions on oneDNN's blocked tensors end to end (`to_mkldnn`, weights reordered once): the
               same convolution kernels (their outputs bitwise equal, checked per conv), no reorder of maps or
               weights between them; BN, ReLU, add and max pool as oneDNN's ops on those tensors (not torchvision's
               bits: shown for the time the reorders take, not as a candidate);
  default      resnet_ext's default mode (bitwise torchvision here, checked).
torchvision / contender per round (rotated interleaved rounds, torch.utils.benchmark), median and range.
Usage: python benchmarks/cpu_default_nchw_ceiling.py [ROUNDS] [ARCH ...]   (2 threads; idle machine)."""
import copy
import statistics
import sys
import types

import torch
import torchvision
from torch.utils.benchmark import Timer

import resnet_ext


def convs_only(tv: torch.nn.Module) -> torch.nn.Module:
    m = copy.deepcopy(tv)
    for mod in list(m.modules()):
        for name, child in list(mod.named_children()):
            if isinstance(child, (torch.nn.BatchNorm2d, torch.nn.ReLU)):
                setattr(mod, name, torch.nn.Identity())

    def forward(self, x):  # the block's convolutions, no add
        out = self.conv3(self.conv2(self.conv1(x))) if hasattr(self, "conv3") else self.conv2(self.conv1(x))
        if self.downsample is not None:
            self.downsample(x)
        return out
    for mod in m.modules():
        if isinstance(mod, (torchvision.models.resnet.Bottleneck, torchvision.models.resnet.BasicBlock)):
            mod.forward = types.MethodType(forward, mod)
    return m


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
            contenders = {"convs only": convs_only(tv), "blocked": fwd, "default": ours}
            print(f"{arch}, NCHW 1x3x224x224, fp32, torch {torch.__version__}: default bitwise torchvision "
                  f"{torch.equal(ours(x), tv(x))}; blocked convs bitwise ATen's {same} ({n} convs)")
            ratios = {k: [] for k in contenders}
            order = [("torchvision", tv)] + list(contenders.items())
            for r in range(rounds):
                t = {}
                for k, m in order[r % len(order):] + order[:r % len(order)]:
                    t[k] = Timer("m(x)", globals={"m": m, "x": x}, num_threads=2).blocked_autorange(
                        min_run_time=1).median
                for k in contenders:
                    ratios[k].append(t["torchvision"] / t[k])
        for k, v in ratios.items():
            print(f"  torchvision / {k:<11} median {statistics.median(v):.3f} ({min(v):.3f}-{max(v):.3f}), "
                  f"{rounds} rounds")


if __name__ == "__main__":
    main()
