"""Reading user images safely: what the camera meant (EXIF orientation), any mode Pillow
knows turned into 8-bit RGB, and a clear one-line reason when a file is not usable."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

#: Larger images are refused (Pillow's own decompression-bomb threshold).
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485


class BadImage(Exception):
    """The file cannot be used as an image; the message says why, in one line."""


@dataclass
class LoadedImage:
    path: Path
    image: Image.Image  # RGB, orientation applied, downsized with --max-side
    encoded: bytes  # what to send to serving_default: the original file when it is exact
    original_size: tuple[int, int]  # (height, width) of the mask to write

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of what is sent."""
        return self.image.height, self.image.width

    @property
    def rgb(self):
        """uint8 numpy array [H, W, 3] (numpy is imported only by paths that need pixels)."""
        import numpy as np

        return np.asarray(self.image, np.uint8)


def _to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB; 16-bit and float greyscale are scaled, not clipped to their low byte."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        if img.mode != "F":
            arr = arr * 255 / (65535 if arr.max(initial=0) > 255 else 255)
        return Image.fromarray(np.clip(arr.round(), 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def load(path: str | Path, max_side: int | None = None) -> LoadedImage:
    """Read and decode an image file (see ``decode``)."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise BadImage("no such file") from None
    except IsADirectoryError:
        raise BadImage("is a directory") from None
    except OSError as exc:
        raise BadImage(exc.strerror or str(exc)) from None
    return decode(raw, max_side, p)


def from_any(image, max_side: int | None = None) -> LoadedImage:
    """What the Python API accepts as an image: a path (``str`` / ``Path``), encoded bytes
    (JPEG, PNG, ...), a PIL image, or a numpy array (uint8 [H, W], [H, W, 3] or
    [H, W, 4]).  Pixels in memory are sent as a fast PNG; files and bytes as they are
    when that is exact."""
    if isinstance(image, (str, Path)):
        return load(image, max_side)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return decode(bytes(image), max_side)
    if not isinstance(image, Image.Image):
        if not hasattr(image, "__array_interface__"):
            raise BadImage(f"cannot use a {type(image).__name__} as an image (give a path, "
                           "bytes, a PIL image or a numpy array)")
        import numpy as np

        arr = np.asarray(image)
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
            raise BadImage(f"an image array must be [H, W], [H, W, 3] or [H, W, 4], "
                           f"got shape {list(arr.shape)}")
        if arr.dtype != np.uint8:
            raise BadImage(f"an image array must be uint8, got {arr.dtype}")
        image = Image.fromarray(arr[..., 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr)
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return decode(buf.getvalue(), max_side)


def decode(raw: bytes, max_side: int | None = None, path: Path | None = None) -> LoadedImage:
    """Encoded image bytes -> LoadedImage (EXIF orientation applied, 8-bit RGB, downsized
    to ``max_side``); ``BadImage`` with a one-line reason otherwise."""
    p = path or Path("<bytes>")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(raw))
            fmt = img.format
            if img.width * img.height > MAX_PIXELS:
                raise BadImage(f"{img.width}x{img.height} pixels is over the "
                               f"{MAX_PIXELS} pixel limit (decompression bomb?)")
            img.load()
            # exif_transpose copies even when there is nothing to do; only call it when
            # the camera recorded a rotation, so exact files are sent as they are.
            rotated = img.getexif().get(0x0112, 1) not in (None, 1)
            oriented = ImageOps.exif_transpose(img) if rotated else img
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"refused: {exc}") from None
    except UnidentifiedImageError:
        raise BadImage("not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImage(f"unreadable image ({str(exc).splitlines()[0]})") from None
    rgb_img = _to_rgb(oriented)
    original = (rgb_img.height, rgb_img.width)
    resized = False
    if max_side and max(rgb_img.size) > max_side:
        scale = max_side / max(rgb_img.size)
        rgb_img = rgb_img.resize((max(1, round(rgb_img.width * scale)),
                                  max(1, round(rgb_img.height * scale))), Image.BILINEAR)
        resized = True
    exact = fmt in ("JPEG", "PNG") and img.mode == "RGB" and not rotated and not resized
    if exact:
        encoded = raw
    else:
        buf = io.BytesIO()
        rgb_img.save(buf, format="PNG", compress_level=1)
        encoded = buf.getvalue()
    return LoadedImage(p, rgb_img, encoded, original)
