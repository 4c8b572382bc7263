"""``tfdeploy export --tile`` options, free of TensorFlow so the CLI and ``api.export``
check them at once (before the seconds a TF import takes); the graph is export/tiling.py.
"""

from __future__ import annotations

#: Default largest tiled image: 8192x8192.  A 6000x4000 photograph (24 Mpx) fits.
DEFAULT_TILE_MAX_SIDE = 8192
DEFAULT_TILE_MAX_PIXELS = DEFAULT_TILE_MAX_SIDE * DEFAULT_TILE_MAX_SIDE
#: Default overlap between neighbouring tiles: an eighth of the tile (64 pixels for 513).
#: DeepLab's masks are least certain near a tile's border (less context); the blend
#: hides that.
OVERLAP_FRACTION = 8
#: Tiles run through the model at once: memory is about this many tiles' activations.
DEFAULT_TILE_BATCH = 4
#: Smallest tile: below this DeepLab's output stride leaves too few feature pixels.
MIN_TILE = 32


def overlap_for(tile: int | None, overlap: int | None) -> int:
    """The overlap asked for, or the default for this tile size."""
    if overlap is not None:
        return overlap
    return (tile or 0) // OVERLAP_FRACTION


def check_tiling(tile: int | None, overlap: int | None = None,
                 batch: int = DEFAULT_TILE_BATCH,
                 max_pixels: int = DEFAULT_TILE_MAX_PIXELS) -> str | None:
    """Why these tiling options are unusable (one line), or None if they are fine."""
    if tile is None:
        # the only tiling option without a default that could hide it
        return "--tile-overlap applies with --tile" if overlap is not None else None
    if tile < MIN_TILE:
        return f"--tile must be at least {MIN_TILE} pixels, got {tile}"
    overlap = overlap_for(tile, overlap)
    if not 0 <= overlap < tile:
        return f"--tile-overlap must be 0..{tile - 1} (less than the tile), got {overlap}"
    if batch < 1:
        return f"--tile-batch must be at least 1, got {batch}"
    if max_pixels < 1:
        return f"--tile-max-pixels must be at least 1, got {max_pixels}"
    return None


def describe(tile: int | None, overlap: int | None, batch: int, max_pixels: int) -> dict | None:
    """What tfdeploy.json records (and ``inspect`` shows) of an export's tiling."""
    if tile is None:
        return None
    return {"tile": tile, "overlap": overlap_for(tile, overlap), "batch": batch,
            "max_pixels": max_pixels}


def tiling_text(tiling: dict) -> str:
    """One line for ``inspect``."""
    side = int(tiling["max_pixels"] ** 0.5)
    limit = (f"{side}x{side}" if side * side == tiling["max_pixels"]
             else f"{tiling['max_pixels']} pixels")
    return (f"images larger than {tiling['tile']}x{tiling['tile']} run in "
            f"{tiling['tile']}-pixel tiles, overlap {tiling['overlap']}, "
            f"{tiling['batch']} at a time; tiled images up to {limit}")
