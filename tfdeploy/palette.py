"""The Pascal VOC colour map: class index -> RGB, the palette of every mask PNG we write.

Shared by the exporter (palette PNGs built inside the graph) and the client (masks and
overlays).  The palette itself is plain bytes, so the client can write masks without
importing numpy.
"""

from __future__ import annotations

from functools import cache

#: Pascal VOC 2012's class names, by class index (the seed's 21-class checkpoints).
VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car",
               "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
               "pottedplant", "sheep", "sofa", "train", "tvmonitor")


@cache
def voc_palette(n: int = 256) -> bytes:
    """RGB triplets, ``3 * n`` bytes: the standard VOC palette (background black, ...)."""
    out = bytearray()
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out += bytes((r, g, b))
    return bytes(out)


def voc_colormap(n: int = 256):
    """uint8 numpy array [n, 3] of the same palette."""
    import numpy as np

    return np.frombuffer(voc_palette(n), np.uint8).reshape(n, 3).copy()
