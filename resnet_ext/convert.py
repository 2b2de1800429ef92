"""Convert ResNet instances between torchvision and resnet_ext. The new model is built on the meta device and
takes over the source's Parameter and buffer objects (load_state_dict(assign=True)): nothing is copied, and an
optimizer built on either model keeps working on the other."""
from __future__ import annotations

import torch
from torch import nn


def _config(model: nn.Module) -> dict:
    first = model.layer1[0]
    basic = not hasattr(first, "conv3")
    dilate = []
    for name in ("layer2", "layer3", "layer4"):
        block = getattr(model, name)[0]
        strided = block.conv1 if basic else block.conv2
        # torchvision's replace_stride_with_dilation turns that layer's stride-2 conv into a stride-1 one.
        dilate.append(strided.stride[0] == 1 and block.downsample is not None)
    return dict(layers=[len(getattr(model, f"layer{i}")) for i in range(1, 5)], basic=basic,
                num_classes=model.fc.out_features, groups=model.groups, width_per_group=model.base_width,
                replace_stride_with_dilation=dilate, norm_layer=type(model.bn1))


def _rebuild(source: nn.Module, resnet_cls, basic_cls, bottleneck_cls) -> nn.Module:
    cfg = _config(source)
    with torch.device("meta"):
        target = resnet_cls(basic_cls if cfg["basic"] else bottleneck_cls, cfg["layers"],
                            num_classes=cfg["num_classes"], groups=cfg["groups"],
                            width_per_group=cfg["width_per_group"],
                            replace_stride_with_dilation=cfg["replace_stride_with_dilation"],
                            norm_layer=cfg["norm_layer"])
    target.load_state_dict(source.state_dict(keep_vars=True), strict=True, assign=True)
    return target.train(source.training)


def from_torchvision(model: nn.Module) -> nn.Module:
    """A resnet_ext ResNet sharing `model`'s parameters and buffers (a torchvision ResNet/ResNeXt/Wide ResNet)."""
    from .models import BasicBlock, Bottleneck, ResNet

    return _rebuild(model, ResNet, BasicBlock, Bottleneck)


def to_torchvision(model: nn.Module) -> nn.Module:
    """A torchvision ResNet sharing `model`'s parameters and buffers (a resnet_ext ResNet)."""
    from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

    return _rebuild(model, ResNet, BasicBlock, Bottleneck)
