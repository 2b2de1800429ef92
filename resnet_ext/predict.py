"""`python -m resnet_ext predict IMAGE [IMAGE ...] --arch resnet50 --weights W`: top-k ImageNet classes per image.

W is a torchvision weights name for the arch (e.g. IMAGENET1K_V2, or DEFAULT), fetched through torchvision's own
loader and cache, or a local checkpoint (a state dict, or a training checkpoint with a "model" entry).
Preprocessing is exactly the transform of that weights entry (the arch's DEFAULT entry for a checkpoint); class
names come from its metadata, offline. Bad input gets a one-line error and exit code 2."""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

ARCHS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d",
         "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2"]


class UserError(Exception):
    """An error in what the user asked for: printed as one line, exit code 2."""


def _weights_entry(arch: str, weights: str):
    """(torchvision weights entry whose transform and categories apply, checkpoint path or None)."""
    from torchvision.models import get_model_weights

    enum = get_model_weights(arch)
    if os.path.isfile(weights):
        return enum.DEFAULT, weights
    if weights == "DEFAULT":
        return enum.DEFAULT, None
    if weights in enum.__members__:
        return enum[weights], None
    if os.sep in weights or weights.endswith((".pt", ".pth", ".ckpt")):
        raise UserError(f"{weights}: no such checkpoint file")
    known = ", ".join(list(enum.__members__) + ["DEFAULT"])
    raise UserError(f"unknown weights {weights!r} for {arch}; known: {known}, or a checkpoint path")


def _load_model(arch: str, entry, checkpoint):
    import resnet_ext

    if checkpoint is None:
        try:
            state = entry.get_state_dict(progress=False, check_hash=True)
        except Exception as e:  # no network, bad cache, ...
            raise UserError(f"could not fetch weights {entry} ({type(e).__name__}: {str(e).splitlines()[0]})")
    else:
        try:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except Exception as e:
            raise UserError(f"{checkpoint}: not a readable checkpoint ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:200]})")
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            state = state["model"]
        if not isinstance(state, dict) or "fc.weight" not in state:
            raise UserError(f"{checkpoint}: not a ResNet state dict (no 'fc.weight')")
    num_classes = state["fc.weight"].shape[0]
    model = getattr(resnet_ext, arch)(num_classes=num_classes)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        raise UserError(f"{checkpoint or entry}: does not fit {arch} ({len(missing)} missing keys, "
                        f"{len(unexpected)} unexpected, {len(shapes)} of another shape, e.g. "
                        f"{(missing + unexpected + shapes)[0]!r})")
    model.load_state_dict(state)
    return model, num_classes


def _load_image(path: str, transform):
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    try:
        with Image.open(path) as im:
            return transform(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read image ({type(e).__name__})")


def run(args) -> list[dict]:
    try:
        import torchvision  # noqa: F401
    except ImportError:
        raise UserError("predict needs torchvision (transforms, weights metadata): pip install torchvision")
    from .bench import Progress

    for path in args.images:  # fail fast, before loading a model
        if not os.path.isfile(path):
            raise UserError(f"{path}: no such file")
    entry, checkpoint = _weights_entry(args.arch, args.weights)
    model, num_classes = _load_model(args.arch, entry, checkpoint)
    categories = entry.meta["categories"]
    if len(categories) != num_classes:
        categories = [f"class {i}" for i in range(num_classes)]
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    transform = entry.transforms()
    k = min(args.topk, num_classes)
    results = []
    progress = Progress(len(args.images), enabled=len(args.images) > 8 and not args.quiet)
    for start in range(0, len(args.images), args.batch_size):
        paths = args.images[start:start + args.batch_size]
        batch = torch.stack([_load_image(p, transform) for p in paths]).to(device)
        with torch.inference_mode():
            probs = model(batch).float().softmax(dim=1)
        top = probs.topk(k, dim=1)
        for i, path in enumerate(paths):
            results.append({"image": path, "top": [
                {"index": int(j), "class": categories[int(j)], "prob": float(p)}
                for p, j in zip(top.values[i].tolist(), top.indices[i].tolist())]})
            progress.step(os.path.basename(path)[:28])
    return results


def main(args) -> int:
    try:
        results = run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for r in results:
            print(r["image"])
            for rank, t in enumerate(r["top"], 1):
                print(f"  {rank}. {t['class']:<32} {t['prob']:.4f}")
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--arch", default="resnet50", choices=ARCHS)
    p.add_argument("--weights", required=True,
                   help="torchvision weights name for --arch (IMAGENET1K_V2, DEFAULT, ...) or a checkpoint path")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
