"""How much two segmentation masks agree: pixel agreement, per-class IoU, a difference map.

One function for every place that compares two model versions' masks (the compare mode
of ``tfdeploy ui``, and ``tfdeploy promote`` later), so a figure on the page is the same
figure a promotion decision is based on.  numpy only: no TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class MaskComparison:
    """``a`` and ``b`` compared pixel by pixel.

    ``iou`` has one entry per class present in either mask: intersection over union of
    that class's pixels in ``a`` and in ``b`` (1.0 when both masks agree exactly on it,
    0.0 when it appears in only one of them).  ``mean_iou`` averages them, so a class that
    covers few pixels counts as much as the background."""

    pixels: int
    agreeing: int
    iou: dict[int, float] = field(default_factory=dict)
    #: class -> pixels in a / in b (the same order as ``iou``)
    pixels_a: dict[int, int] = field(default_factory=dict)
    pixels_b: dict[int, int] = field(default_factory=dict)

    @property
    def agreement(self) -> float:
        """Fraction of pixels with the same class in both masks (1.0 for empty masks)."""
        return self.agreeing / self.pixels if self.pixels else 1.0

    @property
    def mean_iou(self) -> float:
        return float(np.mean(list(self.iou.values()))) if self.iou else 1.0

    def to_json(self) -> dict:
        """Class keys are integers in Python; JSON makes them strings."""
        return {"pixels": self.pixels, "agreeing": self.agreeing,
                "agreement": self.agreement, "mean_iou": self.mean_iou,
                "iou": {str(k): v for k, v in self.iou.items()},
                "pixels_a": {str(k): v for k, v in self.pixels_a.items()},
                "pixels_b": {str(k): v for k, v in self.pixels_b.items()}}


def _as_index(mask) -> np.ndarray:
    """A class-index array [H, W] from a palette ("P") / "L" image or an array."""
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"a mask must be a 2-D class-index array, got shape {list(arr.shape)}")
    return arr


def compare_masks(a, b) -> MaskComparison:
    """Compare two masks of the same size (PIL "P"/"L" images or integer arrays [H, W],
    pixel value = class index).  ValueError when the sizes differ: masks of different
    images, or of a resized one, cannot be compared pixel for pixel."""
    x, y = _as_index(a), _as_index(b)
    if x.shape != y.shape:
        raise ValueError(f"masks differ in size: {x.shape[1]}x{x.shape[0]} and "
                         f"{y.shape[1]}x{y.shape[0]}")
    x = x.astype(np.int64, copy=False).ravel()
    y = y.astype(np.int64, copy=False).ravel()
    n = int(max(x.max(initial=0), y.max(initial=0))) + 1
    # joint histogram: confusion[i, j] = pixels of class i in a and class j in b
    confusion = np.bincount(x * n + y, minlength=n * n).reshape(n, n)
    in_a, in_b, both = confusion.sum(1), confusion.sum(0), np.diag(confusion)
    result = MaskComparison(pixels=int(x.size), agreeing=int(both.sum()))
    for cls in np.flatnonzero((in_a + in_b) > 0):
        union = int(in_a[cls] + in_b[cls] - both[cls])
        result.iou[int(cls)] = float(both[cls]) / union
        result.pixels_a[int(cls)] = int(in_a[cls])
        result.pixels_b[int(cls)] = int(in_b[cls])
    return result


def difference_map(a, b) -> np.ndarray:
    """uint8 RGB [H, W, 3]: where the masks disagree, ``b``'s class colour (what the new
    version says), elsewhere a dark grey, so the differences stand out at a glance."""
    from tfdeploy.palette import voc_colormap

    x, y = _as_index(a), _as_index(b)
    if x.shape != y.shape:
        raise ValueError("masks differ in size")
    out = np.full((*x.shape, 3), 40, np.uint8)
    differ = x != y
    out[differ] = voc_colormap(256)[y[differ]]
    # a class colour can be black (background): mark those differences white
    out[differ & (y == 0)] = 255
    return out
