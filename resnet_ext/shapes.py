"""Every distinct convolution (and activation) shape of a ResNet, collected by running the model on the meta
device with hooks, so benchmarks and tests use the layers the models really have rather than a typed list."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .ops import conv_output_size


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| in float64; NaN or inf anywhere in `a` makes it inf, so NaN never passes."""
    a64, b64 = a.detach().double(), b.detach().double()
    if not torch.isfinite(a64).all():
        return float("inf")
    return ((a64 - b64).abs().max() / b64.abs().max().clamp_min(1e-12)).item()


def norm_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64 (steadier than `rel_err` over few outputs); NaN or inf in `a` makes it inf."""
    a64, b64 = a.detach().double(), b.detach().double()
    if not torch.isfinite(a64).all():
        return float("inf")
    return ((a64 - b64).norm() / b64.norm().clamp_min(1e-12)).item()


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

    def inputs(self, dtype: torch.dtype, residual: bool | None = None, device="cuda", seed: int | None = None):
        """Random (x, weight, bias, residual or None) for this conv in `dtype`, channels_last (NHWC / KRSC), the
        weight scaled by 1/sqrt(fan-in) so outputs stay O(1); drawn from a generator seeded with `seed` (None: the
        global one). The kernels' tests and benchmarks all draw their operands here."""
        residual = self.residual if residual is None else residual
        g = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
        cl = torch.channels_last
        x = torch.randn(self.N, self.C, self.H, self.W, device=device, generator=g).to(dtype).contiguous(memory_format=cl)
        fan_in = self.C // self.groups * self.R * self.S
        w = (torch.randn(self.K, self.C // self.groups, self.R, self.S, device=device, generator=g) / fan_in ** 0.5)
        w = w.to(dtype).contiguous(memory_format=cl)
        b = (0.1 * torch.randn(self.K, device=device, generator=g)).to(dtype)
        r = (torch.randn(self.N, self.K, self.P, self.Q, device=device, generator=g).to(dtype).contiguous(memory_format=cl)
             if residual else None)
        return x, w, b, r

    def reference_fp32(self, x, w, b, r, relu: bool | None = None) -> torch.Tensor:
        """relu?(conv(x, w) + b (+ r)) for this conv in fp32 without TF32: the reference the kernels are judged by."""
        relu = self.relu if relu is None else relu
        old = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        try:
            y = torch.nn.functional.conv2d(x.float(), w.float(), b.float(), self.stride, self.padding, self.dilation,
                                           self.groups)
        finally:
            torch.backends.cudnn.allow_tf32 = old
        if r is not None:
            y = y + r.float()
        return torch.relu(y) if relu else y

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


def fused_train_graphs(arch: str = "resnet50", batch: int = 256, image_size: int = 224) -> list[tuple]:
    """Distinct (pattern, x (N, C, H, W), weight (K, C, R, S), stride, padding, prologue) of the cuDNN graphs the
    fused training decomposition (`engine/fused_train.py`) runs for `arch`'s Bottlenecks (the stem keeps the stock
    path): every conv's forward with its BN sums, the prologue (the previous BN + ReLU) on conv2 and conv3; their
    dgrad fused with that ReLU and BN's weight gradients; their wgrad through the prologue."""
    out: dict[tuple, None] = {}
    for s in conv_shapes(arch, batch, image_size):
        if s.C == 3:  # the stem
            continue
        prologue = s.R == 3 or s.residual  # conv2 and conv3 read the previous BN's output
        geo = ((s.N, s.C, s.H, s.W), (s.K, s.C, s.R, s.S), (s.stride,) * 2, (s.padding,) * 2)
        out.setdefault(("conv_stats", *geo, prologue), None)
        if prologue:
            out.setdefault(("dgrad_drelu_dbn", *geo, True), None)
            out.setdefault(("wgrad", *geo, True), None)
    return list(out)
