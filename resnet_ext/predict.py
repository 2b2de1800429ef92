"""`python -m resnet_ext predict IMAGE [IMAGE ...] --arch resnet50 --weights W`: top-k ImageNet classes per image.

W is a torchvision weights name for the arch (e.g. IMAGENET1K_V2, or DEFAULT), fetched through torchvision's own
loader and cache, or a local checkpoint (a state dict, or a training checkpoint with a "model" entry).
Preprocessing is exactly the transform of that weights entry (the arch's DEFAULT entry for a checkpoint), applied
to the image converted to 8-bit RGB by `to_rgb` (the rule is in its docstring and the README); class names come
from its metadata, offline. The model runs in resnet_ext's frozen mode.

A bad argument (a missing file, a directory, an unknown weights name, a checkpoint of another architecture, a
device this machine does not have, --topk outside 1..classes) is one line and exit code 2 before any work. An image
that cannot be read or converted is one line on stderr while the other images' results still print; the exit
code is then 2."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings

import torch

from .cli import Progress, UserError, default_device, device_arg, first_sentence, int_at_least

ARCHS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d",
         "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2"]
PROG = "python -m resnet_ext predict"


class ImageError(Exception):
    """This image cannot be used (unreadable, or a mode/value range with no faithful 8-bit RGB form)."""


# ---------------------------------------------------------------------------------------------------------------
# Images: whatever PIL opens -> the 8-bit RGB image torchvision's weights transforms (and ImageNet training) expect
# ---------------------------------------------------------------------------------------------------------------

def _composite_on_white(im):
    from PIL import Image

    rgba = im.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb(im):
    """An 8-bit RGB copy of a PIL image, the input torchvision's weights transforms expect:

    - EXIF orientation applied first (ImageOps.exif_transpose), so a photo taken sideways is classified upright.
    - RGB: unchanged (an embedded colour profile is ignored, as in torchvision's ImageNet pipeline).
    - 16-bit (modes I;16, I;16B, I;16L, I;16N; and I holding values 0..65535, as 16-bit PNG/TIFF open in older
      Pillow): scaled to 8 bits by the true range, value >> 8, then grey -> RGB. (Pillow already reads 16-bit RGB
      PNGs as 8-bit RGB by the same rule.) Values outside 0..65535 in mode I are an error.
    - F (32-bit float): values must lie in [0, 1] (the float-image convention); scaled by 255 and rounded.
      Anything else (HDR, NaN) is an error, never silently clipped.
    - 1, L: grey -> RGB (1 becomes 0/255).
    - RGBA, LA, PA, P with a transparent colour (and RGBa, La): composited over white.
    - CMYK: through its embedded ICC profile to sRGB when it has one, else Pillow's CMYK -> RGB formula.
    - YCbCr, LAB, HSV, P (opaque): Pillow's conversion to RGB.
    - Multi-frame files (GIF, TIFF): the first frame.
    """
    import numpy as np
    from PIL import Image, ImageOps

    im = ImageOps.exif_transpose(im)
    mode = im.mode
    if mode == "RGB":
        return im
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(im)
        if a.size and (int(a.min()) < 0 or int(a.max()) > 65535):
            raise ImageError(f"mode {mode} with values {int(a.min())}..{int(a.max())} outside 0..65535")
        return Image.fromarray((a.astype(np.uint32) >> 8).astype(np.uint8)).convert("RGB")
    if mode == "F":
        a = np.asarray(im, dtype=np.float64)
        if a.size and not np.isfinite(a).all():
            raise ImageError(f"32-bit float image with {np.count_nonzero(~np.isfinite(a))} non-finite values "
                             f"(NaN or infinity)")
        if a.size and not (a.min() >= 0.0 and a.max() <= 1.0):
            raise ImageError(f"32-bit float image with values outside [0, 1] (min {a.min():.4g}, max {a.max():.4g})")
        return Image.fromarray(np.rint(a * 255).astype(np.uint8)).convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info):
        return _composite_on_white(im)
    if mode == "CMYK" and im.info.get("icc_profile"):
        import io

        from PIL import ImageCms
        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(im.info["icc_profile"]))
            return ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # a broken profile: Pillow's formula below
    try:
        return im.convert("RGB")
    except (ValueError, OSError) as e:
        raise ImageError(f"mode {mode} cannot be converted to RGB ({e})") from None


def load_image(path: str, transform) -> torch.Tensor:
    """transform(to_rgb(the image at path)); ImageError with a one-line reason if it cannot be done."""
    from PIL import Image

    try:
        with warnings.catch_warnings(record=True) as seen:  # each a line naming the image, not a warnings block
            warnings.simplefilter("always")
            with Image.open(path) as im:
                im.load()
                rgb = to_rgb(im)
        for w in seen:
            print(f"python -m resnet_ext predict: warning: {path}: {first_sentence(w.message, 200)}",
                  file=sys.stderr)
    except ImageError:
        raise
    except Exception as e:  # UnidentifiedImageError, truncated files, decompression bombs, decoder errors, ...
        detail = first_sentence(e, 120)
        raise ImageError(f"cannot read image ({type(e).__name__}{': ' + detail if detail else ''})") from None
    return transform(rgb)


# ---------------------------------------------------------------------------------------------------------------
# Weights and model
# ---------------------------------------------------------------------------------------------------------------

def _weights_entry(arch: str, weights: str):
    """(torchvision weights entry whose transform and categories apply, what to load: that entry or a path)."""
    from torchvision.models import get_model_weights

    from .weights import resolve_weights

    try:
        resolved = resolve_weights(arch, weights)
    except (ValueError, TypeError) as e:
        raise UserError(f"argument --weights: {e}") from None
    enum = get_model_weights(arch)
    if isinstance(resolved, enum):
        return resolved, resolved
    return enum.DEFAULT, resolved


def _load_model(arch: str, entry, source):
    import resnet_ext

    from .weights import check_state_dict, load_state

    try:
        state = load_state(source, progress=False)
    except ValueError as e:
        raise UserError(f"argument --weights: {e}") from None
    except Exception as e:  # fetching a torchvision entry: no network, bad cache, ...
        detail = first_sentence(e)
        raise UserError(f"could not fetch weights {entry} ({type(e).__name__}: {detail})") from None
    if "fc.weight" not in state:
        raise UserError(f"--weights {source}: not a ResNet state dict (no 'fc.weight')")
    num_classes = state["fc.weight"].shape[0]
    model = getattr(resnet_ext, arch)(num_classes=num_classes)
    try:
        check_state_dict(model, state, f"argument --weights: {source}", arch)
    except RuntimeError as e:
        raise UserError(str(e)) from None
    model.load_state_dict(state)
    return model, num_classes


def _check_images(paths: list[str]) -> None:
    for path in paths:
        if os.path.isdir(path):
            raise UserError(f"{path}: is a directory, not an image (pass its files, e.g. {path.rstrip('/')}/*.jpg)")
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"{missing[0]}: no such file{more}")


# ---------------------------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------------------------

def run(args, on_result=None) -> list[dict]:
    """Every image's record in input order: {"image", "top": [{"index", "class", "prob"}...]} or {"image",
    "error"}. on_result(record) is called as each record is ready. Argument errors raise UserError before any
    image is read."""
    try:
        import torchvision  # noqa: F401
    except ImportError:
        raise UserError("predict needs torchvision (transforms, weights metadata): pip install torchvision")
    _check_images(args.images)  # fail fast, before loading a model
    entry, source = _weights_entry(args.arch, args.weights)
    model, num_classes = _load_model(args.arch, entry, source)
    topk = min(5, num_classes) if args.topk is None else args.topk  # the default: 5, or every class of fewer
    if topk > num_classes:
        raise UserError(f"argument --topk: expected 1 to {num_classes} (the model's number of classes), "
                        f"got {topk}")
    categories = entry.meta["categories"]
    if len(categories) != num_classes:
        categories = [f"class {i}" for i in range(num_classes)]
    device = default_device(args.device)
    model = model.to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    import resnet_ext

    model = resnet_ext.freeze(model)  # after the last change to its weights, device and layout
    transform = entry.transforms()
    results = []
    show = len(args.images) > 8 and not args.quiet and (args.json or not sys.stdout.isatty())
    progress = Progress(len(args.images), enabled=show)
    for start in range(0, len(args.images), args.batch_size):
        paths = args.images[start:start + args.batch_size]
        records: list = [None] * len(paths)
        loaded = []
        for i, path in enumerate(paths):
            try:
                loaded.append((i, load_image(path, transform)))
            except ImageError as e:
                records[i] = {"image": path, "error": str(e)}
                progress.message(f"{PROG}: error: {path}: {e}")
        if loaded:
            batch = torch.stack([t for _, t in loaded]).to(device)
            with torch.inference_mode():
                probs = model(batch).float().softmax(dim=1)
            top = probs.topk(topk, dim=1)
            for row, (i, _) in enumerate(loaded):
                records[i] = {"image": paths[i], "top": [  # NaN (a model with NaN weights) as JSON's null
                    {"index": int(j), "class": categories[int(j)], "prob": None if math.isnan(p) else float(p)}
                    for p, j in zip(top.values[row].tolist(), top.indices[row].tolist())]}
        for rec in records:
            results.append(rec)
            if on_result is not None:
                on_result(rec)
            progress.step(os.path.basename(rec["image"])[:28])
    return results


def _prob_text(p) -> str:
    return "nan" if p is None else f"{p:.4f}"


def main(args) -> int:
    def print_text(rec):
        if "top" in rec:
            lines = [rec["image"]] + [f"  {rank}. {t['class']:<32} {_prob_text(t['prob'])}"
                                      for rank, t in enumerate(rec["top"], 1)]
            print("\n".join(lines), flush=True)

    try:
        results = run(args, on_result=None if args.json else print_text)
    except UserError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(results, indent=1))
    failed = sum("error" in r for r in results)
    if failed and len(results) > 1:
        print(f"{PROG}: {failed} of {len(results)} images could not be classified (see above)", file=sys.stderr)
    return 2 if failed else 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--arch", default="resnet50", choices=ARCHS)
    p.add_argument("--weights", required=True,
                   help="torchvision weights name for --arch (IMAGENET1K_V2, DEFAULT, ...) or a checkpoint path")
    p.add_argument("--topk", type=int_at_least(1), default=None,
                   help="classes per image, 1 to the number of classes (default: 5, or all of fewer)")
    p.add_argument("--batch-size", type=int_at_least(1), default=32)
    p.add_argument("--device", type=device_arg, default=None,
                   help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    p.add_argument("--json", action="store_true", help="machine-readable output (failed images get an 'error')")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
