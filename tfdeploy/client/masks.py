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


def overlay(image: Image.Image, mask: Image.Image,
            class_names: dict[int, str] | None = None, alpha: float = 0.55) -> Image.Image:
    """The image with each non-background class painted in its colour; with
    ``class_names`` (index -> name; missing ones are ``class N``) a legend of the classes
    in the mask is drawn in its lower left corner, so a preview says what each colour is."""
    import numpy as np

    if image.size != mask.size:
        image = image.resize(mask.size, Image.BILINEAR)
    index = np.asarray(mask)
    colours = np.frombuffer(voc_palette(256), np.uint8).reshape(256, 3)[index]
    base = np.asarray(image.convert("RGB"), np.float32)
    painted = np.where(index[..., None] > 0, base * (1 - alpha) + colours * alpha, base)
    out = Image.fromarray(painted.round().astype(np.uint8))
    if class_names is not None:
        draw_legend(out, class_counts(mask), class_names)
    return out


def legend_rows(counts: dict[int, int], class_names: dict[int, str]) -> list[tuple[int, str]]:
    """(class index, ``name NN%``) for the classes in a mask, largest share first."""
    total = max(1, sum(counts.values()))
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [(i, f"{class_names.get(i) or f'class {i}'} {100 * n / total:.0f}%")
            for i, n in ordered]


def draw_legend(image: Image.Image, counts: dict[int, int],
                class_names: dict[int, str]) -> None:
    """Colour swatches and class names (with their share of pixels) on a dark box in the
    lower left corner of ``image``, sized to it; as many rows as fit in half its height
    (the rest summed up as ``+N more``).  Too small an image gets none."""
    from PIL import ImageDraw, ImageFont

    if image.height < 48 or image.width < 64 or not counts:
        return
    size = max(10, image.height // 32)
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        font = ImageFont.load_default()
    rows = legend_rows(counts, class_names)
    line = size + size // 2
    fit = max(1, (image.height // 2) // line)
    if len(rows) > fit:
        rows = rows[:fit - 1] + [(-1, f"+{len(rows) - fit + 1} more")]
    draw = ImageDraw.Draw(image, "RGBA")
    pad = size // 2
    widths = [draw.textlength(text, font=font) for _, text in rows]
    box_w = min(image.width, int(pad * 3 + size + max(widths)))
    box_h = pad * 2 + line * len(rows)
    top = image.height - box_h
    draw.rectangle([0, top, box_w, image.height], fill=(0, 0, 0, 160))
    palette = voc_palette(256)
    for n, (index, text) in enumerate(rows):
        y = top + pad + n * line
        if index >= 0:
            colour = tuple(palette[3 * index:3 * index + 3])
            draw.rectangle([pad, y, pad + size, y + size], fill=colour,
                           outline=(255, 255, 255))
        draw.text((pad * 2 + size, y), text, fill=(255, 255, 255), font=font)


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
