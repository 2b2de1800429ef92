"""ResNet models that are drop-ins for torchvision.models.resnet: same constructor arguments, same submodules,
same state_dict keys, same numbers.

Train mode runs torchvision's own op sequence. Eval mode runs each conv + BatchNorm (+ ReLU) and each bottleneck
tail conv + BN + residual add + ReLU as one `resnet_ext::conv_bn_act` call with BN folded into the conv; the folded
weights are cached per conv and re-folded whenever a parameter or buffer they came from changed (optimizer step,
load_state_dict, .to()/.half(), running statistics updated in train mode).
"""
from __future__ import annotations

import os
from typing import Any, Callable, List, Optional, Type, Union

import torch
from torch import Tensor, nn

from .bn_act import bn_act
from .ops import conv_bn_act, fold_bn_weights

__all__ = [
    "ResNet", "BasicBlock", "Bottleneck", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2",
]


# --------------------------------------------------------------------------------------------------------------
# conv + BN (+ residual) (+ ReLU) with BN folded
# --------------------------------------------------------------------------------------------------------------

def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple)
            and isinstance(bn, nn.modules.batchnorm._BatchNorm) and not bn.training
            and bn.running_mean is not None and bn.running_var is not None)


def _is_tracing() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler and (compiler.is_compiling() or getattr(compiler, "is_exporting", lambda: False)()))


def _sources(conv: nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm):
    return (conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var)


def _folded(conv: nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm, channels_last: bool, use_cache: bool):
    def fold():
        w, b = fold_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
        return (w.contiguous(memory_format=torch.channels_last) if channels_last else w), b

    if not use_cache:
        return fold()
    src = _sources(conv, bn)
    try:
        # Data pointers and version counters of every source: any in-place update bumps a version, any new tensor
        # (.to(), .half(), load_state_dict(assign=True), .data = ...) has a new pointer, since the cache keeps its
        # old sources alive (no pointer can be reused while they are).
        key = (tuple(0 if t is None else t.data_ptr() for t in src),
               tuple(0 if t is None else t._version for t in src), bn.eps, channels_last)
    except RuntimeError:  # inference tensors (converted inside torch.inference_mode) have no version counter
        return fold()
    cache = conv.__dict__.get("_resnet_ext_fold")
    if cache is not None and cache[0] == key:
        return cache[2], cache[3]
    with torch.no_grad():
        w, b = fold()
    conv.__dict__["_resnet_ext_fold"] = (key, src, w, b)
    return w, b


def _fused_train_bn(bn: nn.Module) -> bool:
    return type(bn) in (nn.BatchNorm2d, nn.SyncBatchNorm) and bn.training


def conv_bn(conv: nn.Conv2d, bn: nn.Module, x: Tensor, relu: bool, residual: Optional[Tensor] = None,
            relu_module: Optional[nn.Module] = None) -> Tensor:
    """relu?(bn(conv(x)) + residual): in eval one fused op with BN folded into the conv; in training the stock conv
    then one fused BN(+add)+ReLU op; other norm layers run the stock modules in torchvision's order."""
    if _fused_train_bn(bn):
        return bn_act(conv(x), bn, residual, relu)
    if not _foldable(conv, bn):
        out = bn(conv(x))
        if residual is not None:
            out = out + residual
        return (relu_module or nn.functional.relu)(out) if relu else out
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or any(t is not None and t.requires_grad for t in _sources(conv, bn))
        or (residual is not None and residual.requires_grad))
    w, b = _folded(conv, bn, channels_last=x.is_cuda, use_cache=not needs_grad and not _is_tracing())
    return conv_bn_act(x, w, b, residual, conv.stride, conv.padding, conv.dilation, relu, conv.groups)


# --------------------------------------------------------------------------------------------------------------
# Blocks and the network: torchvision's structure and names
# --------------------------------------------------------------------------------------------------------------

def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=dilation, groups=groups,
                     bias=False, dilation=dilation)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


def _shortcut(block: nn.Module, x: Tensor) -> Tensor:
    ds = block.downsample
    if ds is None:
        return x
    if (isinstance(ds, nn.Sequential) and len(ds) == 2 and type(ds[0]) is nn.Conv2d
            and (_foldable(ds[0], ds[1]) or _fused_train_bn(ds[1]))):
        return conv_bn(ds[0], ds[1], x, relu=False)
    return ds(x)


class BasicBlock(nn.Module):
    expansion: int = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 groups: int = 1, base_width: int = 64, dilation: int = 1,
                 norm_layer: Optional[Callable[..., nn.Module]] = None) -> None:
        super().__init__()
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
        out = conv_bn(self.conv1, self.bn1, x, relu=True, relu_module=self.relu)
        return conv_bn(self.conv2, self.bn2, out, relu=True, residual=_shortcut(self, x), relu_module=self.relu)


class Bottleneck(nn.Module):
    # The stride sits on the 3x3 conv (conv2), as in torchvision ("ResNet V1.5").
    expansion: int = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 groups: int = 1, base_width: int = 64, dilation: int = 1,
                 norm_layer: Optional[Callable[..., nn.Module]] = None) -> None:
        super().__init__()
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
        out = conv_bn(self.conv1, self.bn1, x, relu=True, relu_module=self.relu)
        out = conv_bn(self.conv2, self.bn2, out, relu=True, relu_module=self.relu)
        return conv_bn(self.conv3, self.bn3, out, relu=True, residual=_shortcut(self, x), relu_module=self.relu)


class ResNet(nn.Module):
    def __init__(self, block: Type[Union[BasicBlock, Bottleneck]], layers: List[int], num_classes: int = 1000,
                 zero_init_residual: bool = False, groups: int = 1, width_per_group: int = 64,
                 replace_stride_with_dilation: Optional[List[bool]] = None,
                 norm_layer: Optional[Callable[..., nn.Module]] = None) -> None:
        super().__init__()
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
        if x.is_cuda and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)  # the fused kernels are NHWC
        x = conv_bn(self.conv1, self.bn1, x, relu=True, relu_module=self.relu)
        x = self.maxpool(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self._forward_impl(x)

    def to_torchvision(self) -> nn.Module:
        """The torchvision ResNet with this model's parameters and buffers (shared, not copied)."""
        from .convert import to_torchvision

        return to_torchvision(self)


# --------------------------------------------------------------------------------------------------------------
# Constructors and weights
# --------------------------------------------------------------------------------------------------------------

def _load_weights(model: nn.Module, weights: Any, progress: bool) -> None:
    """weights: a torchvision WeightsEnum entry (or its name as a string, e.g. "IMAGENET1K_V2"), a checkpoint path,
    or a state dict."""
    if isinstance(weights, dict):
        state = weights
    elif isinstance(weights, (str, os.PathLike)) and os.path.exists(weights):
        state = torch.load(weights, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]  # a training checkpoint (examples/train.py, torchvision's reference scripts)
    elif hasattr(weights, "get_state_dict"):
        state = weights.get_state_dict(progress=progress, check_hash=True)
    else:
        raise ValueError(f"weights must be a torchvision weights entry, a checkpoint path or a state dict; got "
                         f"{weights!r}" + (" (no such file)" if isinstance(weights, (str, os.PathLike)) else ""))
    model.load_state_dict(state)


def _resolve_weights(arch: str, weights: Any) -> Any:
    """A weights name such as "IMAGENET1K_V2" or "DEFAULT" becomes torchvision's enum entry for `arch`."""
    if isinstance(weights, str) and not os.path.exists(weights):
        from torchvision.models import get_model_weights
        enum = get_model_weights(arch)
        try:
            return enum[weights] if weights != "DEFAULT" else enum.DEFAULT
        except KeyError:
            names = ", ".join(e.name for e in enum)
            raise ValueError(f"unknown weights {weights!r} for {arch}; known: {names}, DEFAULT") from None
    return weights


def _resnet(arch: str, block, layers: List[int], weights: Any, progress: bool, **kwargs: Any) -> ResNet:
    weights = _resolve_weights(arch, weights)
    meta = getattr(weights, "meta", None)
    if meta and "categories" in meta:
        kwargs.setdefault("num_classes", len(meta["categories"]))
    model = ResNet(block, layers, **kwargs)
    if weights is not None:
        _load_weights(model, weights, progress)
    return model


def resnet18(*, weights: Any = None, progress: bool = True, **kwargs: Any) -> ResNet:
    return _resnet("resnet18", BasicBlock, [2, 2, 2, 2], weights, progress, **kwargs)


def resnet34(*, weights: Any = None, progress: bool = True, **kwargs: Any) -> ResNet:
    return _resnet("resnet34", BasicBlock, [3, 4, 6, 3], weights, progress, **kwargs)


def resnet50(*, weights: Any = None, progress: bool = True, **kwargs: Any) -> ResNet:
    return _resnet("resnet50", Bottleneck, [3, 4, 6, 3], weights, progress, **kwargs)


def resnet101(*, weights: Any = None, progress: bool = True, **kwargs: Any) -> ResNet:
    return _resnet("resnet101", Bottleneck, [3, 4, 23, 3], weights, progress, **kwargs)


def resnet152(*, weights: Any = None, progress: bool = True, **kwargs: Any) -> ResNet:
    return _resnet("resnet152", Bottleneck, [3, 8, 36, 3], weights, progress, **kwargs)


def resnext50_32x4d(*, weights: Any = None, progress: bool = True, **kwargs: Any) -> ResNet:
    kwargs.setdefault("groups", 32)
    kwargs.setdefault("width_per_group", 4)
    return _resnet("resnext50_32x4d", Bottleneck, [3, 4, 6, 3], weights, progress, **kwargs)


def resnext101_32x8d(*, weights: Any = None, progress: bool = True, **kwargs: Any) -> ResNet:
    kwargs.setdefault("groups", 32)
    kwargs.setdefault("width_per_group", 8)
    return _resnet("resnext101_32x8d", Bottleneck, [3, 4, 23, 3], weights, progress, **kwargs)


def resnext101_64x4d(*, weights: Any = None, progress: bool = True, **kwargs: Any) -> ResNet:
    kwargs.setdefault("groups", 64)
    kwargs.setdefault("width_per_group", 4)
    return _resnet("resnext101_64x4d", Bottleneck, [3, 4, 23, 3], weights, progress, **kwargs)


def wide_resnet50_2(*, weights: Any = None, progress: bool = True, **kwargs: Any) -> ResNet:
    kwargs.setdefault("width_per_group", 64 * 2)
    return _resnet("wide_resnet50_2", Bottleneck, [3, 4, 6, 3], weights, progress, **kwargs)


def wide_resnet101_2(*, weights: Any = None, progress: bool = True, **kwargs: Any) -> ResNet:
    kwargs.setdefault("width_per_group", 64 * 2)
    return _resnet("wide_resnet101_2", Bottleneck, [3, 4, 23, 3], weights, progress, **kwargs)
