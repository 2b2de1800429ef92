"""The explicit frozen mode: `freeze(model)` folds every conv + BatchNorm once (and on the CPU prepacks the
folded weights for oneDNN), on the contract that the weights do not change until the user calls `freeze` again
(or `unfreeze`). Like torch.compile's freezing or torch.jit.freeze, it trades that contract for speed; the
default (unfrozen) mode is always torchvision's answer."""
from __future__ import annotations

from torch import nn


def freeze(model: nn.Module) -> nn.Module:
    """Puts `model` (a resnet_ext ResNet) in eval mode and freezes it in place; returns it."""
    model.eval()
    model._resnet_ext_frozen = True
    return model


def unfreeze(model: nn.Module) -> nn.Module:
    """Back to the default mode (every forward reads the live parameters); returns `model`."""
    model.__dict__.pop("_resnet_ext_frozen", None)
    return model


def is_frozen(model: nn.Module) -> bool:
    return bool(model.__dict__.get("_resnet_ext_frozen", False))
