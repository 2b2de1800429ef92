"""ResNet models that are drop-ins for torchvision.models.resnet: same constructor arguments, same submodules,
same state_dict keys, same numbers, same behaviour under hooks, module swaps, tracing, scripting and export.

This file is torchvision's module code. Each forward asks `engine.enabled(self, x)` (no FX or TorchScript tracing,
ONNX export, global hook, no input other than a tensor, nor a train-mode forward that computes as torchvision does anyway, ...) and then hands over to the engine (`engine.forward` for the network, `engine.block` for a block), which
runs what it can prove unchanged from torchvision fused and the rest through these modules; the engine's state on
a model is dropped where resnet_ext sees weights change (`train`, `_apply`, `load_state_dict` here; writes into
folded tensors on the next frozen forward, engine/frozen.py).
"""
import functools
import inspect
import os
from collections.abc import Mapping
from typing import Any, Callable, List, Optional, Type, Union

import torch
from torch import Tensor, nn

from . import engine
from ._recast import convert
from .bn_act import upgrade_marks
from .weights import load_state, resolve_weights

try:  # subclassing torchvision's classes makes isinstance checks against them hold for these models
    from torchvision.models import resnet as _tv
except ImportError:  # torchvision is optional: then the classes derive from nn.Module alone
    _tv = None


def _tv_class(name: str) -> type:
    return getattr(_tv, name) if _tv is not None else nn.Module


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


@engine.serves("block")
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
            if engine.enabled(self, x):
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
        return engine.block(self, x)



@engine.serves("block")
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
            if engine.enabled(self, x):
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
        return engine.block(self, x)



@engine.serves("model")
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
            if engine.enabled(self, x):
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
        return engine.forward(self, x)

    # The frozen folds follow what resnet_ext can see change: conversions, loads, training.
    def train(self, mode: bool = True):
        if mode:
            engine.invalidate(self)
        return super().train(mode)

    def _apply(self, fn, recurse=True):
        engine.invalidate(self)
        return super()._apply(fn, recurse)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        engine.invalidate(self)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def __setstate__(self, state):
        super().__setstate__(engine.upgrade_pickled(state))
        upgrade_marks(self)  # the children are loaded before their parent

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


def _overwrite_named_param(kwargs: dict, name: str, value: Any) -> None:
    """torchvision's rule for an argument the architecture or its weights fix: set it, or torchvision's
    ValueError where the caller gave another value."""
    if name in kwargs and kwargs[name] != value:
        raise ValueError(f"The parameter '{name}' expected value {value} but got {kwargs[name]} instead.")
    kwargs[name] = value


def _legacy_interface(weights_enum: str):
    """torchvision's builders' legacy interface (its own `handle_legacy_interface`): `pretrained=True/False` and
    positional `weights`/`progress`, with its deprecation warnings. resnet_ext's own kinds of `weights` (a state
    dict, a path object), which that decorator would take for `pretrained=True`, pass by it. The builder's
    docstring is torchvision's, after a line on what resnet_ext adds."""
    def decorate(builder):
        builder.__doc__ = (f"torchvision.models.{builder.__name__} as a resnet_ext model: the same arguments, network "
                           "and state_dict keys (weights may also be a state dict or a file path).")
        if _tv is None:
            return builder
        builder.__doc__ += "\n\n" + inspect.cleandoc(getattr(_tv, builder.__name__).__doc__ or "")
        from torchvision.models._utils import handle_legacy_interface

        legacy = handle_legacy_interface(
            weights=("pretrained", lambda _: getattr(_tv, weights_enum).IMAGENET1K_V1))(builder)

        @functools.wraps(builder)
        def build(*args: Any, **kwargs: Any) -> ResNet:
            if isinstance(args[0] if args else kwargs.get("weights"), (Mapping, os.PathLike)):
                kwargs.update(zip(("weights", "progress"), args))
                return builder(**kwargs)
            return legacy(*args, **kwargs)
        return build
    return decorate


def _resnet(arch: str, block, layers: List[int], weights: Any, progress: bool, **kwargs: Any) -> ResNet:
    weights = resolve_weights(arch, weights)
    meta = getattr(weights, "meta", None)
    if meta and "categories" in meta:
        _overwrite_named_param(kwargs, "num_classes", len(meta["categories"]))
    model = ResNet(block, layers, **kwargs)
    if weights is not None:
        model.load_state_dict(load_state(weights, progress))
    return model


@_legacy_interface("ResNet18_Weights")
def resnet18(*, weights: _weights("ResNet18_Weights") = None, progress: bool = True, **kwargs: Any) -> ResNet:
    return _resnet("resnet18", BasicBlock, [2, 2, 2, 2], weights, progress, **kwargs)


@_legacy_interface("ResNet34_Weights")
def resnet34(*, weights: _weights("ResNet34_Weights") = None, progress: bool = True, **kwargs: Any) -> ResNet:
    return _resnet("resnet34", BasicBlock, [3, 4, 6, 3], weights, progress, **kwargs)


@_legacy_interface("ResNet50_Weights")
def resnet50(*, weights: _weights("ResNet50_Weights") = None, progress: bool = True, **kwargs: Any) -> ResNet:
    return _resnet("resnet50", Bottleneck, [3, 4, 6, 3], weights, progress, **kwargs)


@_legacy_interface("ResNet101_Weights")
def resnet101(*, weights: _weights("ResNet101_Weights") = None, progress: bool = True, **kwargs: Any) -> ResNet:
    return _resnet("resnet101", Bottleneck, [3, 4, 23, 3], weights, progress, **kwargs)


@_legacy_interface("ResNet152_Weights")
def resnet152(*, weights: _weights("ResNet152_Weights") = None, progress: bool = True, **kwargs: Any) -> ResNet:
    return _resnet("resnet152", Bottleneck, [3, 8, 36, 3], weights, progress, **kwargs)


@_legacy_interface("ResNeXt50_32X4D_Weights")
def resnext50_32x4d(*, weights: _weights("ResNeXt50_32X4D_Weights") = None, progress: bool = True, **kwargs: Any) -> ResNet:
    _overwrite_named_param(kwargs, "groups", 32)
    _overwrite_named_param(kwargs, "width_per_group", 4)
    return _resnet("resnext50_32x4d", Bottleneck, [3, 4, 6, 3], weights, progress, **kwargs)


@_legacy_interface("ResNeXt101_32X8D_Weights")
def resnext101_32x8d(*, weights: _weights("ResNeXt101_32X8D_Weights") = None, progress: bool = True, **kwargs: Any) -> ResNet:
    _overwrite_named_param(kwargs, "groups", 32)
    _overwrite_named_param(kwargs, "width_per_group", 8)
    return _resnet("resnext101_32x8d", Bottleneck, [3, 4, 23, 3], weights, progress, **kwargs)


@_legacy_interface("ResNeXt101_64X4D_Weights")
def resnext101_64x4d(*, weights: _weights("ResNeXt101_64X4D_Weights") = None, progress: bool = True, **kwargs: Any) -> ResNet:
    _overwrite_named_param(kwargs, "groups", 64)
    _overwrite_named_param(kwargs, "width_per_group", 4)
    return _resnet("resnext101_64x4d", Bottleneck, [3, 4, 23, 3], weights, progress, **kwargs)


@_legacy_interface("Wide_ResNet50_2_Weights")
def wide_resnet50_2(*, weights: _weights("Wide_ResNet50_2_Weights") = None, progress: bool = True, **kwargs: Any) -> ResNet:
    _overwrite_named_param(kwargs, "width_per_group", 64 * 2)
    return _resnet("wide_resnet50_2", Bottleneck, [3, 4, 6, 3], weights, progress, **kwargs)


@_legacy_interface("Wide_ResNet101_2_Weights")
def wide_resnet101_2(*, weights: _weights("Wide_ResNet101_2_Weights") = None, progress: bool = True, **kwargs: Any) -> ResNet:
    _overwrite_named_param(kwargs, "width_per_group", 64 * 2)
    return _resnet("wide_resnet101_2", Bottleneck, [3, 4, 23, 3], weights, progress, **kwargs)
