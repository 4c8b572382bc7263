"""Synthetic segmentation scenes: coloured shapes over textured backgrounds.

Used to train the demo checkpoint, to make the demo images (``tfdeploy/demo/images``), and by tests
to check that served masks are right on images the model has never seen.  numpy + Pillow.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

#: Class index -> name; indices match the VOC palette colours of the masks.
CLASSES = ("background", "circle", "square", "triangle", "star")


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    c1, c2 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    kind = rng.integers(4)
    if kind == 0:  # stripes at a random angle
        a, period = rng.uniform(0, math.pi), rng.uniform(6, 24)
        t = (np.sin((x * math.cos(a) + y * math.sin(a)) * 2 * math.pi / period) > 0)
    elif kind == 1:  # checkerboard
        s = int(rng.integers(6, 20))
        t = ((x // s + y // s) % 2).astype(bool)
    elif kind == 2:  # smooth gradient
        t = (x * rng.uniform(-1, 1) + y * rng.uniform(-1, 1))
        t = (t - t.min()) / (np.ptp(t) + 1e-6)
    else:  # blotchy noise
        small = rng.uniform(0, 1, (h // 8 + 1, w // 8 + 1))
        t = np.asarray(Image.fromarray((small * 255).astype(np.uint8)).resize((w, h)),
                       np.float32) / 255
    t = np.asarray(t, np.float32)[..., None]
    img = c1 * (1 - t) + c2 * t + rng.normal(0, 8, (h, w, 3))
    return np.clip(img, 0, 255)


def _polygon(cls: int, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    if cls == 2:
        n, radii = 4, [r] * 4
    elif cls == 3:
        n, radii = 3, [r] * 3
    else:  # star
        n, radii = 10, [r if i % 2 == 0 else r * 0.45 for i in range(10)]
    return [(cx + radii[i] * math.cos(rot + 2 * math.pi * i / n),
             cy + radii[i] * math.sin(rot + 2 * math.pi * i / n)) for i in range(n)]


def scene(rng: np.random.Generator, height: int = 128, width: int = 128,
          max_shapes: int = 4, radius_ref: float | None = None,
          stats: dict[str, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One scene: (image uint8 [H, W, 3], label uint8 [H, W] with CLASSES indices).

    Shape radii are 8-22% of ``radius_ref`` (default: the shorter side), so training can
    show a small window of a large scene's shapes without paying for the whole scene.
    Later shapes are drawn over earlier ones; ``stats``, when given, gets
    ``overlap_pixels`` added: how many pixels of a shape another one covers (so a test
    can show that its scenes include overlaps)."""
    ref = min(height, width) if radius_ref is None else radius_ref
    covered = np.zeros((height, width), bool)
    image = _texture(rng, height, width)
    label = Image.new("L", (width, height), 0)
    draw_label = ImageDraw.Draw(label)
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        cls = int(rng.integers(1, len(CLASSES)))
        r = min(rng.uniform(0.08, 0.22) * ref, min(height, width) / 2 - 1)
        cx, cy = rng.uniform(r, width - r), rng.uniform(r, height - r)
        shape_mask = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(shape_mask)
        if cls == 1:
            box = [cx - r, cy - r, cx + r, cy + r]
            draw.ellipse(box, fill=255)
            draw_label.ellipse(box, fill=cls)
        else:
            pts = _polygon(cls, cx, cy, r, rng.uniform(0, 2 * math.pi))
            draw.polygon(pts, fill=255)
            draw_label.polygon(pts, fill=cls)
        m = np.asarray(shape_mask, np.float32)[..., None] / 255
        if stats is not None:
            inside = m[..., 0] > 0.5
            stats["overlap_pixels"] = stats.get("overlap_pixels", 0) + int(
                np.sum(covered & inside))
            covered |= inside
        fill = _texture(rng, height, width) * 0.3 + rng.uniform(0, 255, 3) * 0.7
        image = image * (1 - m) + fill * m
    return image.astype(np.uint8), np.asarray(label, np.uint8)


def batch(rng: np.random.Generator, n: int, height: int = 128, width: int = 128,
          max_shapes: int = 4, radius_ref: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``n`` scenes stacked: (images uint8 [n, H, W, 3], labels uint8 [n, H, W])."""
    pairs = [scene(rng, height, width, max_shapes, radius_ref) for _ in range(n)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def class_iou(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Intersection over union of each shape class (background left out), over all the
    pixels of ``predicted`` and ``truth`` (class-index arrays of one shape): the number
    the demo model is trained and tested for.  A class absent from both counts as 1."""
    ious = {}
    for c, name in enumerate(CLASSES[1:], start=1):
        union = int(np.sum((predicted == c) | (truth == c)))
        ious[name] = float(np.sum((predicted == c) & (truth == c)) / union) if union else 1.0
    return ious
