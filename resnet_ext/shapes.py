"""Every distinct convolution (and activation) shape of a ResNet, collected by running the model on the meta
device with hooks, so benchmarks and tests use the layers the models really have rather than a typed list."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .ops import conv_output_size


@dataclass(frozen=True)
class ConvShape:
    N: int
    C: int
    H: int
    W: int
    K: int
    R: int
    S: int
    stride: int
    padding: int
    dilation: int
    groups: int
    residual: bool  # the bottleneck tail: conv + BN + residual add + ReLU
    relu: bool

    @property
    def P(self) -> int:
        return conv_output_size(self.H, self.R, self.stride, self.padding, self.dilation)

    @property
    def Q(self) -> int:
        return conv_output_size(self.W, self.S, self.stride, self.padding, self.dilation)

    def with_batch(self, n: int) -> "ConvShape":
        return ConvShape(**{**asdict(self), "N": n})

    @property
    def name(self) -> str:
        tail = "+res" if self.residual else ""
        act = "+relu" if self.relu else ""
        dil = f"d{self.dilation}" if self.dilation != 1 else ""
        return (f"n{self.N}_c{self.C}_{self.H}x{self.W}_k{self.K}_{self.R}x{self.S}s{self.stride}{dil}"
                f"{tail}{act}")

    def flops(self) -> int:
        return 2 * self.N * self.P * self.Q * self.K * (self.C // self.groups) * self.R * self.S

    def min_bytes(self, elem: int) -> int:
        """Fewest bytes a fused kernel must move: read x, weight, bias (and residual), write y once."""
        out = self.N * self.K * self.P * self.Q
        return elem * (self.N * self.C * self.H * self.W + self.K * self.C // self.groups * self.R * self.S
                       + self.K + out * (2 if self.residual else 1))


def _role(name: str) -> tuple[bool, bool]:
    """(residual, relu) of the conv called `name` in a torchvision-structured ResNet."""
    if name.endswith("downsample.0"):
        return False, False
    if name.endswith(".conv3"):
        return True, True
    return False, True


def conv_shapes(arch: str = "resnet50", batch: int = 1, image_size: int = 224, **model_kwargs) -> list[ConvShape]:
    """Distinct conv shapes of `arch` in network order (first occurrence kept)."""
    import torchvision

    with torch.device("meta"):
        model = getattr(torchvision.models, arch)(**model_kwargs)
    basic = isinstance(model.layer1[0], torchvision.models.resnet.BasicBlock)
    seen: dict[ConvShape, None] = {}

    def hook_for(name):
        def hook(mod, inputs, _output):
            x = inputs[0]
            residual, relu = _role(name)
            if basic and name.startswith("layer") and name.endswith(".conv2"):
                residual = True
            shape = ConvShape(batch, x.shape[1], x.shape[2], x.shape[3], mod.out_channels, mod.kernel_size[0],
                              mod.kernel_size[1], mod.stride[0], mod.padding[0], mod.dilation[0], mod.groups,
                              residual, relu)
            seen.setdefault(shape, None)
        return hook

    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Conv2d):
            mod.register_forward_hook(hook_for(name))
    with torch.no_grad():
        model(torch.empty(batch, 3, image_size, image_size, device="meta"))
    return list(seen)


def activation_shapes(arch: str = "resnet50", batch: int = 1, image_size: int = 224) -> list[tuple]:
    """Distinct (N, C, H, W, residual) of the BN(+add)+ReLU activations a training step runs."""
    out = {}
    for s in conv_shapes(arch, batch, image_size):
        out.setdefault((s.N, s.K, s.P, s.Q, s.residual), None)
    return list(out)
