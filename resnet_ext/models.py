"""ResNet models that are drop-ins for torchvision.models.resnet: same constructor arguments, same submodules,
same state_dict keys, same numbers, same behaviour under hooks, module swaps, tracing, scripting and export.

Each block's forward is torchvision's; where its conv + BatchNorm (+ residual) (+ ReLU) units are the stock modules
without hooks (see `fusion`), they run fused instead: in eval mode on CUDA one `conv_bn_act` call per unit with
the BN folded into the conv (folded afresh on every forward, in one batch for the whole model, or once in the
frozen mode, see `frozen`, whose CUDA forward may replay graphs, see `graphs`); on the CPU the default mode applies
BN unfolded, as torchvision computes it. In training mode the stock conv, then the stock BN(+add)+ReLU or the
fused op (`fusion.train_bn`). In eval mode on the CPU a model that is still the stock structure runs its whole
forward as one flat sequence of calls (`flat`).
"""
import os
from collections.abc import Mapping
from typing import Any, Callable, List, Optional, Type, Union

import torch
from torch import Tensor, nn

from . import flat as _flat
from . import frozen as _frozen
from . import graphs as _graphs
from . import fusion
from . import state as _state
from ._recast import convert
from .weights import load_state, resolve_weights

try:  # subclassing torchvision's classes makes isinstance checks against them hold for these models
    from torchvision.models import resnet as _tv
except ImportError:  # torchvision is optional: then the classes derive from nn.Module alone
    _tv = None


def _tv_class(name: str) -> type:
    return getattr(_tv, name) if _tv is not None else nn.Module


def _all_finite(x: Tensor) -> bool:
    """Whether every element of a floating-point `x` is finite. A sum with a NaN or inf in it is never finite, so
    a finite sum proves it in one reduction (10x faster than isfinite().all(): 16 vs 160 us at 1x3x224x224); only
    a non-finite sum (a non-finite element, or an overflow) needs the elementwise check."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32  # a 16-bit sum would overflow early
    return bool(torch.isfinite(x.sum(dtype=acc))) or bool(torch.isfinite(x).all())


__all__ = [
    "ResNet", "BasicBlock", "Bottleneck", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2",
]


# --------------------------------------------------------------------------------------------------------------
# Blocks and the network: torchvision's structure and names
# --------------------------------------------------------------------------------------------------------------

def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=dilation, groups=groups,
                     bias=False, dilation=dilation)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(_tv_class("BasicBlock")):
    expansion: int = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 groups: int = 1, base_width: int = 64, dilation: int = 1,
                 norm_layer: Optional[Callable[..., nn.Module]] = None) -> None:
        nn.Module.__init__(self)  # not torchvision's __init__ (a base class when installed)
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock only supports groups=1 and base_width=64")
        if dilation > 1:
            raise NotImplementedError("Dilation > 1 not supported in BasicBlock")
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        if not torch.jit.is_scripting():
            if fusion.enabled():
                return self._forward_fused(x)
        identity = x

        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)

        out = self.conv2(out)
        out = self.bn2(out)

        if self.downsample is not None:
            identity = self.downsample(x)

        out += identity
        out = self.relu(out)

        return out

    @torch.jit.unused
    def _forward_fused(self, x: Tensor) -> Tensor:
        out = fusion.unit(self.conv1, self.bn1, self.relu, x)
        return fusion.unit(self.conv2, self.bn2, self.relu, out, shortcut=lambda: fusion.downsample(self.downsample, x))

    @torch.jit.unused
    def _unit_pairs(self) -> List[tuple]:
        """The (conv, bn) pairs of the main path, in forward order."""
        return [(self.conv1, self.bn1), (self.conv2, self.bn2)]


class Bottleneck(_tv_class("Bottleneck")):
    # The stride sits on the 3x3 conv (conv2), as in torchvision ("ResNet V1.5").
    expansion: int = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 groups: int = 1, base_width: int = 64, dilation: int = 1,
                 norm_layer: Optional[Callable[..., nn.Module]] = None) -> None:
        nn.Module.__init__(self)  # not torchvision's __init__ (a base class when installed)
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = norm_layer(width)
        self.conv2 = conv3x3(width, width, stride, groups, dilation)
        self.bn2 = norm_layer(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        if not torch.jit.is_scripting():
            if fusion.enabled():
                return self._forward_fused(x)
        identity = x

        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)

        out = self.conv2(out)
        out = self.bn2(out)
        out = self.relu(out)

        out = self.conv3(out)
        out = self.bn3(out)

        if self.downsample is not None:
            identity = self.downsample(x)

        out += identity
        out = self.relu(out)

        return out

    @torch.jit.unused
    def _forward_fused(self, x: Tensor) -> Tensor:
        out = fusion.unit(self.conv1, self.bn1, self.relu, x)
        out = fusion.unit(self.conv2, self.bn2, self.relu, out)
        return fusion.unit(self.conv3, self.bn3, self.relu, out, shortcut=lambda: fusion.downsample(self.downsample, x))

    @torch.jit.unused
    def _unit_pairs(self) -> List[tuple]:
        """The (conv, bn) pairs of the main path, in forward order."""
        return [(self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)]


class ResNet(_tv_class("ResNet")):
    def __init__(self, block: Type[Union[BasicBlock, Bottleneck]], layers: List[int], num_classes: int = 1000,
                 zero_init_residual: bool = False, groups: int = 1, width_per_group: int = 64,
                 replace_stride_with_dilation: Optional[List[bool]] = None,
                 norm_layer: Optional[Callable[..., nn.Module]] = None) -> None:
        nn.Module.__init__(self)  # not torchvision's __init__ (a base class when installed)
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        self._norm_layer = norm_layer
        self.inplanes = 64
        self.dilation = 1
        if replace_stride_with_dilation is None:
            replace_stride_with_dilation = [False, False, False]
        if len(replace_stride_with_dilation) != 3:
            raise ValueError("replace_stride_with_dilation should be None or a 3-element tuple, got "
                             f"{replace_stride_with_dilation}")
        self.groups = groups
        self.base_width = width_per_group
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2, dilate=replace_stride_with_dilation[0])
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2, dilate=replace_stride_with_dilation[1])
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2, dilate=replace_stride_with_dilation[2])
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck) and m.bn3.weight is not None:
                    nn.init.constant_(m.bn3.weight, 0)
                elif isinstance(m, BasicBlock) and m.bn2.weight is not None:
                    nn.init.constant_(m.bn2.weight, 0)

    def _make_layer(self, block: Type[Union[BasicBlock, Bottleneck]], planes: int, blocks: int, stride: int = 1,
                    dilate: bool = False) -> nn.Sequential:
        norm_layer = self._norm_layer
        downsample = None
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                       norm_layer(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width, previous_dilation,
                        norm_layer)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, groups=self.groups, base_width=self.base_width,
                                dilation=self.dilation, norm_layer=norm_layer))
        return nn.Sequential(*layers)

    def _forward_impl(self, x: Tensor) -> Tensor:
        if not torch.jit.is_scripting():
            if fusion.enabled():
                return self._forward_fused(x)
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.maxpool(x)

        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)

        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.fc(x)

        return x

    def forward(self, x: Tensor) -> Tensor:
        return self._forward_impl(x)

    @torch.jit.unused
    def _forward_fused(self, x: Tensor) -> Tensor:
        if (x.is_cuda and _graphs.wanted(self)
                and not (self.training or torch.compiler.is_compiling() or torch.jit.is_tracing())):
            folds = self._frozen_folds()
            if folds is not None:
                out = _graphs.forward(self, x, folds, lambda t: self._forward_frozen_units(t, folds))
                if out is not None:
                    return out
        if x.is_cuda and x.dim() == 4 and (not self.training or fusion.train_fused(x)):
            x = x.contiguous(memory_format=torch.channels_last)  # the fused kernels are NHWC
        if torch.compiler.is_compiling():  # each unit folds in the graph, which the compiler fuses
            return self._forward_units(x)
        if not self.training and x.device.type == "cpu":
            folds = self._frozen_folds()
            if folds is not None:
                if not torch.jit.is_tracing() and x.is_floating_point() and not _all_finite(x):
                    # oneDNN's fused ReLU turns NaN into 0 (as compile+freezing does); torchvision propagates it.
                    with fusion.stock_modules():
                        return self._forward_impl(x)
                out = _flat.forward_frozen(self, x, folds)
            else:
                out = _flat.forward_default(self, x)
            if out is not None:
                return out
        with fusion.forward_state(self._forward_state(x)):
            return self._forward_units(x)

    @torch.jit.unused
    def _forward_frozen_units(self, x: Tensor, folds) -> Tensor:
        """The eager frozen forward on CUDA, which `graphs` captures."""
        with fusion.forward_state(fusion.Forward(folds)):
            return self._forward_units(x.contiguous(memory_format=torch.channels_last))

    @torch.jit.unused
    def _forward_units(self, x: Tensor) -> Tensor:
        x = fusion.unit(self.conv1, self.bn1, self.relu, x)
        x = fusion.ops.max_pool(self.maxpool, x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)

    @torch.jit.unused
    def _frozen_folds(self):
        """The frozen folds, or None: not frozen, or this forward may need gradients for the parameters (the frozen
        folds are constants, so such a forward runs as in the default mode, with differentiable folds)."""
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
            return None
        return _frozen.folds_of(self)

    @torch.jit.unused
    def _forward_state(self, x: Tensor) -> Optional[fusion.Forward]:
        """This forward's BN folds: the frozen ones (eager only), else (where BN is folded, see `fusion.unfolds`)
        all of them, now, in one batch."""
        if self.training:
            return None
        frozen = None if torch.jit.is_tracing() else self._frozen_folds()
        if frozen is not None:
            return fusion.Forward(frozen)
        if fusion.unfolds(x):
            return None
        pairs = self._fold_pairs()
        grad = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters()))
        with torch.set_grad_enabled(grad):
            folded = fusion.fold_pairs(pairs, channels_last=fusion.wants_channels_last(x))
        return fusion.Forward({(conv, bn): f for (conv, bn), f in zip(pairs, folded)})

    @torch.jit.unused
    def _fold_pairs(self) -> List[tuple]:
        """Every foldable (conv, bn) pair the fused forward will look up, in forward order."""
        pairs = [(self.conv1, self.bn1)]
        for m in self.modules():
            if type(m) in (BasicBlock, Bottleneck):
                pairs += m._unit_pairs()
                ds = m.downsample
                if type(ds) is nn.Sequential and len(ds) == 2:
                    pairs.append((ds[0], ds[1]))
        return [(c, b) for c, b in pairs if fusion.foldable(c, b)]

    # The frozen folds follow what resnet_ext can see change: conversions, loads, training.
    def train(self, mode: bool = True):
        if mode:
            _frozen.invalidate(self)
        return super().train(mode)

    def _apply(self, fn, recurse=True):
        _frozen.invalidate(self)
        return super()._apply(fn, recurse)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        _frozen.invalidate(self)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def __setstate__(self, state):
        # A model pickled before the state object kept its frozen flag under this key.
        if "_resnet_ext_frozen" in state:
            state = dict(state)
            state[_state.KEY] = _state.ExtState(state.pop("_resnet_ext_frozen"))
            state.pop("_resnet_ext_folds", None)
        super().__setstate__(state)

    def to_torchvision(self) -> nn.Module:
        """The torchvision ResNet with this model's parameters and buffers (shared, not copied)."""
        from torchvision.models import resnet as tv

        return convert(self, (ResNet, BasicBlock, Bottleneck), (tv.ResNet, tv.BasicBlock, tv.Bottleneck))


# --------------------------------------------------------------------------------------------------------------
# Constructors and weights
# --------------------------------------------------------------------------------------------------------------

def _weights(enum_name: str):
    """A builder's `weights` annotation: torchvision's weights enum for it (what torchvision's get_model_weights
    reads off a builder), or a name, a checkpoint path or a state dict."""
    other = Union[str, os.PathLike, Mapping[str, Any]]
    enum = getattr(_tv, enum_name, None) if _tv is not None else None
    return Optional[Union[enum, other]] if enum is not None else Optional[other]


def _resnet(arch: str, block, layers: List[int], weights: Any, progress: bool, **kwargs: Any) -> ResNet:
    weights = resolve_weights(arch, weights)
    meta = getattr(weights, "meta", None)
    if meta and "categories" in meta:
        kwargs.setdefault("num_classes", len(meta["categories"]))
    model = ResNet(block, layers, **kwargs)
    if weights is not None:
        model.load_state_dict(load_state(weights, progress))
    return model


def resnet18(*, weights: _weights("ResNet18_Weights") = None, progress: bool = True, **kwargs: Any) -> ResNet:
    return _resnet("resnet18", BasicBlock, [2, 2, 2, 2], weights, progress, **kwargs)


def resnet34(*, weights: _weights("ResNet34_Weights") = None, progress: bool = True, **kwargs: Any) -> ResNet:
    return _resnet("resnet34", BasicBlock, [3, 4, 6, 3], weights, progress, **kwargs)


def resnet50(*, weights: _weights("ResNet50_Weights") = None, progress: bool = True, **kwargs: Any) -> ResNet:
    return _resnet("resnet50", Bottleneck, [3, 4, 6, 3], weights, progress, **kwargs)


def resnet101(*, weights: _weights("ResNet101_Weights") = None, progress: bool = True, **kwargs: Any) -> ResNet:
    return _resnet("resnet101", Bottleneck, [3, 4, 23, 3], weights, progress, **kwargs)


def resnet152(*, weights: _weights("ResNet152_Weights") = None, progress: bool = True, **kwargs: Any) -> ResNet:
    return _resnet("resnet152", Bottleneck, [3, 8, 36, 3], weights, progress, **kwargs)


def resnext50_32x4d(*, weights: _weights("ResNeXt50_32X4D_Weights") = None, progress: bool = True, **kwargs: Any) -> ResNet:
    kwargs.setdefault("groups", 32)
    kwargs.setdefault("width_per_group", 4)
    return _resnet("resnext50_32x4d", Bottleneck, [3, 4, 6, 3], weights, progress, **kwargs)


def resnext101_32x8d(*, weights: _weights("ResNeXt101_32X8D_Weights") = None, progress: bool = True, **kwargs: Any) -> ResNet:
    kwargs.setdefault("groups", 32)
    kwargs.setdefault("width_per_group", 8)
    return _resnet("resnext101_32x8d", Bottleneck, [3, 4, 23, 3], weights, progress, **kwargs)


def resnext101_64x4d(*, weights: _weights("ResNeXt101_64X4D_Weights") = None, progress: bool = True, **kwargs: Any) -> ResNet:
    kwargs.setdefault("groups", 64)
    kwargs.setdefault("width_per_group", 4)
    return _resnet("resnext101_64x4d", Bottleneck, [3, 4, 23, 3], weights, progress, **kwargs)


def wide_resnet50_2(*, weights: _weights("Wide_ResNet50_2_Weights") = None, progress: bool = True, **kwargs: Any) -> ResNet:
    kwargs.setdefault("width_per_group", 64 * 2)
    return _resnet("wide_resnet50_2", Bottleneck, [3, 4, 6, 3], weights, progress, **kwargs)


def wide_resnet101_2(*, weights: _weights("Wide_ResNet101_2_Weights") = None, progress: bool = True, **kwargs: Any) -> ResNet:
    kwargs.setdefault("width_per_group", 64 * 2)
    return _resnet("wide_resnet101_2", Bottleneck, [3, 4, 23, 3], weights, progress, **kwargs)
