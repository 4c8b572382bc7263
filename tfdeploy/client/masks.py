"""Writing masks: palette PNGs (Pascal VOC colours, pixel value = class index), blended
previews, class pixel counts.  Files appear atomically or not at all."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from tfdeploy.palette import voc_colormap

_PALETTE = voc_colormap(256)


def palette_image(mask: np.ndarray) -> Image.Image:
    img = Image.fromarray(mask.astype(np.uint8), mode="L")
    img = img.convert("P")
    img.putpalette(_PALETTE.tobytes())
    return img


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour back to (height, width): class indices must not be blended."""
    if mask.shape[:2] == size:
        return mask
    img = Image.fromarray(mask.astype(np.uint8), mode="L").resize((size[1], size[0]),
                                                                 Image.NEAREST)
    return np.asarray(img)


def overlay(rgb: np.ndarray, mask: np.ndarray, alpha: float = 0.55) -> Image.Image:
    """The image with each non-background class painted in its colour."""
    colours = _PALETTE[mask].astype(np.float32)
    base = rgb.astype(np.float32)
    painted = np.where(mask[..., None] > 0, base * (1 - alpha) + colours * alpha, base)
    return Image.fromarray(painted.round().astype(np.uint8))


def class_counts(mask: np.ndarray) -> dict[str, int]:
    values, counts = np.unique(mask, return_counts=True)
    return {str(int(v)): int(c) for v, c in zip(values, counts, strict=True)}


def save_atomic(image: Image.Image, path: Path, **save_args) -> None:
    """Write to a temporary file in the target directory, then rename over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            image.save(fh, format=save_args.pop("format", "PNG"), **save_args)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
