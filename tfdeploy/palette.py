"""The Pascal VOC colour map: class index -> RGB, the palette of every mask PNG we write.

Shared by the exporter (palette PNGs built inside the graph) and the client (masks and
overlays); numpy only.
"""

from __future__ import annotations

import numpy as np


def voc_colormap(n: int = 256) -> np.ndarray:
    """uint8 [n, 3]: the standard VOC palette (background black, aeroplane maroon, ...)."""
    cmap = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap
