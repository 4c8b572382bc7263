"""Writing masks: palette PNGs (Pascal VOC colours, pixel value = class index), blended
previews, class pixel counts.  Files appear atomically or not at all.

Masks travel as Pillow "P" images, so the common path (the server's PNG, written as it is)
needs no numpy; numpy is imported only to build masks from arrays and to blend overlays.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from PIL import Image

from tfdeploy.palette import voc_palette


def palette_image(mask) -> Image.Image:
    """A "P" image from a class-index array [H, W]."""
    import numpy as np

    img = Image.fromarray(np.asarray(mask).astype(np.uint8), mode="L").convert("P")
    img.putpalette(voc_palette(256))
    return img


def resize_mask(mask: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Nearest-neighbour to (height, width): class indices must not be blended."""
    if (mask.height, mask.width) == size:
        return mask
    return mask.resize((size[1], size[0]), Image.NEAREST)


def overlay(image: Image.Image, mask: Image.Image, alpha: float = 0.55) -> Image.Image:
    """The image with each non-background class painted in its colour."""
    import numpy as np

    if image.size != mask.size:
        image = image.resize(mask.size, Image.BILINEAR)
    index = np.asarray(mask)
    colours = np.frombuffer(voc_palette(256), np.uint8).reshape(256, 3)[index]
    base = np.asarray(image.convert("RGB"), np.float32)
    painted = np.where(index[..., None] > 0, base * (1 - alpha) + colours * alpha, base)
    return Image.fromarray(painted.round().astype(np.uint8))


def class_counts(mask: Image.Image) -> dict[int, int]:
    """Pixels per class index (an int; JSON output makes it a string key), from the
    mask's histogram."""
    return {i: n for i, n in enumerate(mask.histogram()[:256]) if n}


def _read_umask() -> int:
    """The process umask (read once, at import, before any worker thread exists: setting
    it to read it is not thread-safe)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def save_atomic(content: Image.Image | bytes, path: Path, **save_args) -> None:
    """Write to a temporary file in the target directory, then rename over the target.
    The file gets the mode a plain ``open()`` would give it (0666 less the umask), not
    the temporary file's private 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as fh:
            if isinstance(content, bytes):
                fh.write(content)
            else:
                content.save(fh, format=save_args.pop("format", "PNG"), **save_args)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
