"""How closely an export reproduces the float32 checkpoint model, measured on images.

A reduced-precision export is never bit-equal to float32, so "verified" means: on probe
images that look like real input (the synthetic probe, the demo images in ``examples/``
and any photographs the user passes), the served masks agree with the float32 masks on
at least ``min_agreement`` of the pixels, image by image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image, UnidentifiedImageError

from tfdeploy.errors import UserError
from tfdeploy.export import warmup

#: The demo images (``make demo`` predicts them); part of every verification.
EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
#: Probe images are shrunk to this long side: DeepLab's usual input size, and it bounds
#: verification time whatever resolution a user's photographs have.
MAX_PROBE_SIDE = 513


@dataclass
class ImageAgreement:
    name: str
    height: int
    width: int
    pixel_agreement: float
    max_abs_logit_diff: float
    max_abs_logit: float  # of the float32 reference: the scale the difference is judged by
    #: An int8 export was calibrated on this image: its agreement is not held-out evidence.
    calibration: bool = False


@dataclass
class Agreement:
    """Per image and overall agreement between an export and the float32 reference."""

    images: list[ImageAgreement] = field(default_factory=list)

    @property
    def min_pixel_agreement(self) -> float:
        return min(i.pixel_agreement for i in self.images)

    @property
    def pixel_agreement(self) -> float:
        """All probe pixels pooled."""
        return _pooled(self.images)

    def split(self) -> dict[str, dict]:
        """Pooled and worst agreement of the calibration images and of the held-out ones
        (an int8 export has seen the former; only the latter is unbiased evidence)."""
        out = {}
        for key, flag in (("calibration", True), ("held_out", False)):
            chosen = [i for i in self.images if i.calibration == flag]
            out[key] = {"images": len(chosen),
                        "pixel_agreement": round(_pooled(chosen), 6) if chosen else None,
                        "min_pixel_agreement": (round(min(i.pixel_agreement for i in chosen), 6)
                                                if chosen else None)}
        return out

    @property
    def max_abs_logit_diff(self) -> float:
        return max(i.max_abs_logit_diff for i in self.images)

    def worst(self) -> ImageAgreement:
        return min(self.images, key=lambda i: i.pixel_agreement)

    def to_json(self) -> dict:
        return {"pixel_agreement": round(self.pixel_agreement, 6),
                "min_pixel_agreement": round(self.min_pixel_agreement, 6),
                "max_abs_logit_diff": self.max_abs_logit_diff,
                **self.split(),
                "images": [asdict(i) for i in self.images]}


def _pooled(images: list[ImageAgreement]) -> float:
    total = sum(i.height * i.width for i in images)
    return sum(i.pixel_agreement * i.height * i.width for i in images) / total


def _shrink(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    if max(h, w) <= MAX_PROBE_SIDE:
        return image
    k = MAX_PROBE_SIDE / max(h, w)
    size = (max(1, round(w * k)), max(1, round(h * k)))
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))


def read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, UnidentifiedImageError) as exc:
        raise UserError(f"{path}: not a readable image ({exc})") from None


def probe_images(extra: list[str | Path] = ()) -> list[tuple[str, np.ndarray]]:
    """(name, RGB uint8) probes: the synthetic probe, the demo images, then ``extra``
    (image files, or directories of them), each shrunk to at most MAX_PROBE_SIDE."""
    probes = [("synthetic probe", warmup.probe_image())]
    paths = sorted(p for p in EXAMPLES_DIR.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    return probes + user_images(extra, "probe", paths)


def user_images(items: list[str | Path], what: str = "probe",
                paths: list[Path] | None = None) -> list[tuple[str, np.ndarray]]:
    """(path, RGB uint8) for image files and directories of them (after ``paths``),
    each shrunk to at most MAX_PROBE_SIDE; UserError naming ``what`` they were for."""
    paths = list(paths or [])
    for item in map(Path, items):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UserError(f"{item}: no images ({', '.join(IMAGE_SUFFIXES)}) here")
            paths.extend(found)
        elif item.is_file():
            paths.append(item)
        else:
            raise UserError(f"{item}: no such {what} image or directory")
    return [(str(p), _shrink(read_image(p))) for p in paths]


def image_key(name: str) -> str:
    """The same image file however its path was spelled (``examples/x.jpg`` given to
    --calibration, the absolute path probe_images lists): to tell calibration images."""
    return str(Path(name).resolve())


def measure(reference, exported, probes: list[tuple[str, np.ndarray]],
            calibration: frozenset[str] = frozenset()) -> Agreement:
    """Compare ``exported.logits`` (the loaded SavedModel) with ``reference.logits`` (the
    float32 checkpoint model) image by image: argmax agreement and max logit difference.
    Images in ``calibration`` (``image_key`` of their names) are marked as such."""
    result = Agreement()
    for name, image in probes:
        batch = tf.constant(image[None].astype(np.float32))
        expected = reference.logits(batch).numpy()
        got = exported.logits(batch).numpy()
        h, w = image.shape[:2]
        result.images.append(ImageAgreement(
            name=name, height=h, width=w,
            pixel_agreement=float(np.mean(expected.argmax(-1) == got.argmax(-1))),
            max_abs_logit_diff=float(np.max(np.abs(got - expected))),
            max_abs_logit=float(np.max(np.abs(expected))),
            calibration=image_key(name) in calibration,
        ))
    return result
