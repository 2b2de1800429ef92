"""What `weights=` means, in one place for the model constructors, `python -m resnet_ext predict` and
examples/train.py:

    resolve_weights(arch, weights)  ->  None | torchvision weights entry | checkpoint path | state dict
    load_state(resolved, progress)  ->  a state dict (a training checkpoint's "model" entry unwrapped, a
                                        DistributedDataParallel "module." / torch.compile "_orig_mod." prefix
                                        removed)
    check_state_dict(model, state, source, arch)  ->  None, or one RuntimeError line saying what does not fit

Every error is one line that says what was wrong with the argument: a path-looking string that does not exist is
"no such file", a directory is "a directory", an unknown name lists the known names once (and DEFAULT once).
"""
from __future__ import annotations

import os
import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from .cli import first_sentence

__all__ = ["WeightsFileNotFound", "UnknownWeights", "resolve_weights", "load_state", "check_state_dict"]

# The suffixes that make a string a path rather than a weights name (names are like IMAGENET1K_V2).
_PATH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".tar", ".pkl", ".safetensors")
_QUALIFIED_NAME = re.compile(r"^(\w+_Weights)\.(\w+)$")  # "ResNet50_Weights.IMAGENET1K_V2"


class WeightsFileNotFound(FileNotFoundError, ValueError):
    """A weights path that does not exist. Both a FileNotFoundError and (like every bad `weights=` value) a
    ValueError, so `except ValueError` keeps working for callers that caught the old "unknown weights" error."""


class UnknownWeights(ValueError, KeyError):
    """A weights name the architecture does not have: a ValueError (one line listing the known names) and, like
    torchvision's `Weights.verify` (an enum lookup), a KeyError."""
    __str__ = ValueError.__str__  # not KeyError's quoted repr


def _looks_like_path(s: str) -> bool:
    return (os.sep in s or (os.altsep is not None and os.altsep in s) or "/" in s or s.startswith(("~", "."))
            or s.lower().endswith(_PATH_SUFFIXES))


def resolve_weights(arch: str, weights: Any) -> Any:
    """`weights` as one of: None; a torchvision weights entry for `arch` (a name such as "IMAGENET1K_V2",
    "DEFAULT" or "ResNet50_Weights.IMAGENET1K_V2" becomes the entry); a path to an existing checkpoint file (returned
    as given); a state dict (a Mapping, returned as given).

    A string is an entry's name first (as torchvision reads it), then a path. Raises WeightsFileNotFound for a path
    (a PathLike, or a string with a path separator or a checkpoint suffix) that does not exist, ValueError for a
    directory, an unknown name or another architecture's weights entry, ImportError for a name without torchvision
    installed, and TypeError for anything else."""
    if weights is None or isinstance(weights, Mapping):
        return weights
    if hasattr(weights, "get_state_dict") and hasattr(weights, "meta"):  # a torchvision WeightsEnum entry
        from torchvision.models import get_model_weights

        enum = get_model_weights(arch)
        if not isinstance(weights, enum):
            raise ValueError(f"{type(weights).__name__}.{weights.name} are weights for another architecture, not "
                             f"{arch} (use {enum.__name__}, e.g. {enum.__name__}.DEFAULT)")
        return weights
    if isinstance(weights, os.PathLike) or isinstance(weights, str):
        path = os.fspath(weights)
        # A string is an entry's name first, as torchvision's weights argument reads it (a file of that name is
        # "./IMAGENET1K_V2"); then a path.
        enum = qualified = None
        if isinstance(weights, str):
            try:
                from torchvision.models import get_model_weights
            except ImportError:  # the names are torchvision's: without it, a string can only be a path
                get_model_weights = None
            if get_model_weights is not None:
                enum = get_model_weights(arch)
                qualified = _QUALIFIED_NAME.match(weights)
                name = qualified.group(2) if qualified and qualified.group(1) == enum.__name__ else weights
                if name in enum.__members__:  # the entries and their aliases (DEFAULT)
                    return enum[name]
        if os.path.isdir(path):
            raise ValueError(f"{path}: is a directory, not a checkpoint file")
        if os.path.isfile(path):
            return weights
        if qualified and qualified.group(1) != enum.__name__:
            raise ValueError(f"{weights} are weights for another architecture, not {arch} "
                             f"(use {enum.__name__}.<name>)")
        if isinstance(weights, os.PathLike) or _looks_like_path(weights):
            raise WeightsFileNotFound(f"{path}: no such file")
        if enum is None:
            raise ImportError(f"weights={weights!r}: a weights name needs torchvision installed (or pass a checkpoint "
                              f"file path)")
        known = ", ".join([e.name for e in enum] + ["DEFAULT"])  # iterating an Enum skips the DEFAULT alias
        raise UnknownWeights(f"unknown weights {weights!r} for {arch}; known: {known} (or a checkpoint file path)")
    raise TypeError(f"weights must be None, a torchvision weights entry or its name, a checkpoint path or a state "
                    f"dict; got {type(weights).__name__}")


def _unwrap(state: Any, source: str) -> dict:
    if (isinstance(state, Mapping) and isinstance(state.get("model"), Mapping)
            and not any(isinstance(v, torch.Tensor) and "." in str(k) for k, v in state.items() if k != "model")):
        # examples/train.py's checkpoint (and torchvision's reference scripts'): the model's state beside the
        # optimizer's, the step, RNG states. Not a state dict that holds model tensors ("layer1.0.conv1.weight")
        # of its own beside a "model" entry: that one is refused below, not loaded from the entry.
        state = state["model"]
    if not isinstance(state, Mapping) or not state:
        kind = "an empty dict" if isinstance(state, Mapping) else type(state).__name__
        raise ValueError(f"{source}: not a state dict (holds {kind})")
    bad = next((k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise ValueError(f"{source}: not a state dict (entry {bad!r} is a {type(state[bad]).__name__}, "
                         f"not a tensor)")
    state = OrderedDict(state)  # a copy: the prefixes are removed in place
    for prefix in ("module.", "_orig_mod.", "module."):  # DDP, torch.compile, DDP of a compiled model
        # Only a prefix that every key has (a wrapper's whole state): a dict that mixes keys with and without one
        # goes to load_state_dict as it is, for torchvision's error, not a renamed key overwriting a real one.
        if all(k.startswith(prefix) for k in state):
            consume_prefix_in_state_dict_if_present(state, prefix)
    return dict(state)


def load_state(weights: Any, progress: bool = True) -> dict:
    """The state dict that a resolved `weights` (see resolve_weights; not None) stands for. A path is read with
    torch.load(weights_only=True) on the CPU; an unreadable file (truncated, not a torch checkpoint) is one
    ValueError line. A torchvision entry is fetched through torchvision's loader and cache (network errors
    propagate as they are)."""
    if weights is None:
        raise ValueError("no weights to load")
    if isinstance(weights, Mapping):
        return _unwrap(weights, "the state dict")
    if isinstance(weights, (str, os.PathLike)):
        path = os.fspath(weights)
        if os.path.isdir(path):
            raise ValueError(f"{path}: is a directory, not a checkpoint file")
        if not os.path.isfile(path):
            raise WeightsFileNotFound(f"{path}: no such file")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated zip, not a torch file, pickled objects weights_only refuses, ...
            first = first_sentence(e)
            raise ValueError(f"{path}: not a readable checkpoint ({type(e).__name__}: {first})") from None
        return _unwrap(state, path)
    if hasattr(weights, "get_state_dict"):
        return _unwrap(weights.get_state_dict(progress=progress, check_hash=True), str(weights))
    raise TypeError(f"cannot load weights from a {type(weights).__name__}")


def check_state_dict(model: torch.nn.Module | Mapping, state: Mapping, source: str = "state dict",
                     arch: str | None = None) -> None:
    """Raises one RuntimeError line when `state` does not fit `model` (a module or its state dict): how many keys
    are missing, unexpected or of another shape, with the first of each. load_state_dict's own error lists every
    mismatch (pages for a checkpoint of another depth)."""
    expected = model.state_dict() if isinstance(model, torch.nn.Module) else model
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if not (missing or unexpected or shapes):
        return
    what = arch or (type(model).__name__ if isinstance(model, torch.nn.Module) else "the model")
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {missing[0]!r})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]!r})")
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} of another shape (e.g. {k!r}: {list(state[k].shape)} here, "
                     f"{list(expected[k].shape)} in {what})")
    raise RuntimeError(f"{source}: does not fit {what}: " + ", ".join(parts))
