"""Convert ResNet instances between torchvision and resnet_ext.

The converted model is a new module tree whose modules hold the source's very Parameter and buffer objects (nothing
is copied: an optimizer built on either model keeps working on the other) and the same attributes and hooks; only
the ResNet and block classes change. Whatever else the source holds comes along as it is: a replaced `fc` head,
parametrizations, legacy weight_norm, other norm layers.
"""
from __future__ import annotations

from torch import nn

from . import models
from ._recast import convert


def from_torchvision(model: nn.Module) -> nn.Module:
    """A resnet_ext ResNet sharing `model`'s parameters, buffers and submodule settings (a torchvision
    ResNet/ResNeXt/Wide ResNet)."""
    from torchvision.models import resnet as tv

    return convert(model, (tv.ResNet, tv.BasicBlock, tv.Bottleneck),
                   (models.ResNet, models.BasicBlock, models.Bottleneck))


def to_torchvision(model: nn.Module) -> nn.Module:
    """A torchvision ResNet sharing `model`'s parameters, buffers and submodule settings (a resnet_ext ResNet)."""
    if type(model) is not models.ResNet:
        raise TypeError(f"expected a resnet_ext.models.ResNet, got {type(model).__name__}")
    return model.to_torchvision()
