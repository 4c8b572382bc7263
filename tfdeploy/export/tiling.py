"""Tiled inference inside the served graph (``tfdeploy export --tile N``).

A 6000x4000 photograph through DeepLab at once costs gigabytes (activations grow with the
pixel count), and downscaling it loses the full-resolution mask that aerial, medical and
document users need.  ``TiledModel`` wraps any model with DeepLabV3's ``predict`` /
``logits`` interface: an image larger than the tile (either side) is cut into
overlapping tiles, the tiles run in batches of at most ``batch`` through the model, and
their logits are blended with a window that weights tile centres more (a tile's border
pixels see less context).  Images no larger than a tile take the model's own path,
unchanged, so their masks are bit-identical to an untiled export.

Memory stays close to one tile batch, not the whole image: tiles are visited row by row
and left to right, and a pixel's label is computed as soon as the last tile covering it
has run.  Only two carries of blended logits are kept: the right overlap of the previous
tile in the row (tile height x overlap x classes) and the bottom overlap of the previous
row (overlap x image width x classes).  The finished labels are uint8 until the end.

Everything is TensorFlow ops (``tf.while_loop`` over tile rows, tile batches and tiles),
so tensorflow_model_server serves a tiled export exactly like our embedded server.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from tfdeploy.export.tilespec import (  # noqa: F401 (re-exported for export())
    DEFAULT_TILE_BATCH,
    DEFAULT_TILE_MAX_PIXELS,
    check_tiling,
    describe,
    overlap_for,
)

#: The loops are written as tf.while_loop/tf.cond already: AutoGraph has nothing to convert
#: (and warns about the lambdas it cannot parse).
_plain = tf.autograph.experimental.do_not_convert


def tiled(model: Any, num_classes: int, tile: int | None, overlap: int | None, batch: int,
          max_pixels: int) -> Any:
    """``model`` tiled as asked, or ``model`` itself when ``tile`` is None."""
    if tile is None:
        return model
    return TiledModel(model, num_classes, tile, overlap, batch, max_pixels)


def window(size: tf.Tensor) -> tf.Tensor:
    """1-D blending weights for a tile side of ``size`` pixels: a tent, highest at the
    centre and positive at the borders (where only one tile may cover the image)."""
    t = tf.range(size, dtype=tf.float32)
    n = tf.cast(size, tf.float32)
    return (tf.minimum(t, n - 1.0 - t) + 1.0) / tf.math.ceil(n / 2.0)


def positions(length: tf.Tensor, tile: tf.Tensor, stride: int) -> tf.Tensor:
    """Start of every tile along one side: every ``stride`` pixels, the last one moved
    back so it ends at the image's edge (all tiles are full size)."""
    count = (length - tile + stride - 1) // stride + 1
    return tf.minimum(tf.range(count) * stride, length - tile)


def coverage(length: tf.Tensor, tile: tf.Tensor, stride: int) -> tf.Tensor:
    """Sum of the windows of every tile covering each pixel along one side (the blend's
    normaliser is the product of both sides', since the tile grid is a product)."""
    starts = positions(length, tile, stride)
    win = window(tile)
    idx = tf.reshape(starts[:, None] + tf.range(tile)[None, :], [-1, 1])
    updates = tf.tile(win, [tf.size(starts)])
    return tf.tensor_scatter_nd_add(tf.zeros([length]), idx, updates)


def _ends(starts: tf.Tensor, index: tf.Tensor, tile: tf.Tensor) -> tf.Tensor:
    """Where the pixels final after tile ``index`` end: the next tile's start, or the
    tile's own end for the last one."""
    count = tf.size(starts)
    return tf.where(index + 1 < count, starts[tf.minimum(index + 1, count - 1)],
                    starts[index] + tile)


class TiledModel(tf.Module):
    """``model`` (DeepLabV3, FrozenGraphModel or WrappedModel) run tile by tile on images
    larger than ``tile`` pixels on either side."""

    def __init__(self, model: Any, num_classes: int, tile: int,
                 overlap: int | None = None, batch: int = DEFAULT_TILE_BATCH,
                 max_pixels: int = DEFAULT_TILE_MAX_PIXELS) -> None:
        super().__init__(name="tiled")
        problem = check_tiling(tile, overlap, batch, max_pixels)
        if problem:
            raise ValueError(problem)
        self.model = model
        self.num_classes = int(num_classes)
        self.tile, self.batch = int(tile), int(batch)
        self.overlap = overlap_for(tile, overlap)
        self.stride = self.tile - self.overlap
        self.max_pixels = int(max_pixels)

    # -- the served interface -------------------------------------------------------------
    def needs_tiles(self, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
        return tf.logical_or(height > self.tile, width > self.tile)

    def check_pixels(self, height: tf.Tensor, width: tf.Tensor, max_pixels: int,
                     untiled_check) -> tf.Operation:
        """The untiled limit for images that fit a tile, this larger one for the rest."""
        tiled = self.needs_tiles(tf.cast(height, tf.int64), tf.cast(width, tf.int64))
        zero = tf.zeros([], tf.int64)
        small = untiled_check(tf.where(tiled, zero, tf.cast(height, tf.int64)),
                              tf.where(tiled, zero, tf.cast(width, tf.int64)), max_pixels)
        pixels = tf.cast(height, tf.int64) * tf.cast(width, tf.int64)
        side = int(self.max_pixels ** 0.5)
        limit = (f"{side}x{side}" if side * side == self.max_pixels
                 else f"{self.max_pixels} pixels")
        large = tf.debugging.assert_less_equal(
            tf.where(tiled, pixels, zero), tf.constant(self.max_pixels, tf.int64),
            message=f"image is larger than this model allows: limit of {limit} for tiled "
                    f"images ({self.max_pixels} pixels; set at export with "
                    "--tile-max-pixels)")
        return tf.group(small, large)

    @_plain
    def predict(self, images: tf.Tensor) -> tf.Tensor:
        """int64 labels [N, H, W]; ``images`` may be uint8 (tiles are cast one batch at a
        time, so a large image is never held as float32 whole)."""
        shape = tf.shape(images)

        def whole():
            return self.model.predict(tf.cast(images, tf.float32))

        def tiled():
            labels = tf.map_fn(lambda image: self._tiled(image, self._labels),
                               images, parallel_iterations=1,
                               fn_output_signature=tf.TensorSpec([None, None], tf.uint8))
            return tf.cast(labels, tf.int64)

        return tf.cond(self.needs_tiles(shape[1], shape[2]), tiled, whole)

    @_plain
    def logits(self, images: tf.Tensor) -> tf.Tensor:
        """float32 [N, H, W, classes]: the blended logits (a labels model's one-hot votes)."""
        shape = tf.shape(images)
        spec = tf.TensorSpec([None, None, self.num_classes], tf.float32)

        def tiled():
            return tf.map_fn(lambda image: self._tiled(image, self._normalised), images,
                             parallel_iterations=1, fn_output_signature=spec)

        return tf.cond(self.needs_tiles(shape[1], shape[2]), tiled,
                       lambda: self.model.logits(tf.cast(images, tf.float32)))

    # -- finishing blended blocks -----------------------------------------------------------
    def _labels(self, block: tf.Tensor, rows: tf.Tensor, cols: tf.Tensor) -> tf.Tensor:
        # normalised first, so the labels are exactly the argmax of ``logits``
        return tf.cast(tf.argmax(self._normalised(block, rows, cols), axis=-1), tf.uint8)

    def _normalised(self, block: tf.Tensor, rows: tf.Tensor, cols: tf.Tensor) -> tf.Tensor:
        return block / (rows[:, None, None] * cols[None, :, None])

    # -- the loops ------------------------------------------------------------------------
    @_plain
    def _tiled(self, image: tf.Tensor, finish) -> tf.Tensor:
        """One image [H, W, 3] -> ``finish``'s output for the whole image, tile by tile."""
        height, width = tf.shape(image)[0], tf.shape(image)[1]
        th, tw = tf.minimum(self.tile, height), tf.minimum(self.tile, width)
        ys, xs = positions(height, th, self.stride), positions(width, tw, self.stride)
        wy_sum, wx_sum = coverage(height, th, self.stride), coverage(width, tw, self.stride)
        weights = (window(th)[:, None] * window(tw)[None, :])[..., None]
        classes = self.num_classes
        n_x = tf.size(xs)
        out_dtype = tf.uint8 if finish == self._labels else tf.float32
        out_shape = tf.TensorShape([None, None] if out_dtype == tf.uint8 else
                                   [None, None, classes])
        any_block = tf.TensorShape([None, None, classes])

        def row_body(i, vcarry, rows_out):
            y0 = ys[i]
            y_end = _ends(ys, i, th)
            final_rows = y_end - y0
            carry_rows = tf.shape(vcarry)[0]
            strip = image[y0:y0 + th]

            def batch_body(k, hcarry, carry_out, row_out):
                j0 = k * self.batch
                j1 = tf.minimum(j0 + self.batch, n_x)
                tiles = tf.map_fn(lambda j: strip[:, xs[j]:xs[j] + tw], tf.range(j0, j1),
                                  fn_output_signature=tf.TensorSpec([None, None, 3],
                                                                    image.dtype))
                logits = self.model.logits(tf.cast(tiles, tf.float32)) * weights

                def tile_body(t, hcarry, carry_out, row_out):
                    j = j0 + t
                    x0 = xs[j]
                    width_final = _ends(xs, j, tw) - x0
                    acc = logits[t] + tf.pad(hcarry, [[0, 0], [0, tw - tf.shape(hcarry)[1]],
                                                      [0, 0]])
                    block = acc[:, :width_final]
                    above = vcarry[:, x0:x0 + width_final]
                    block = block + tf.pad(above, [[0, th - carry_rows], [0, 0], [0, 0]])
                    done = finish(block[:final_rows], wy_sum[y0:y0 + final_rows],
                                  wx_sum[x0:x0 + width_final])
                    return (t + 1, acc[:, width_final:],
                            carry_out.write(j, block[final_rows:]), row_out.write(j, done))

                _, hcarry, carry_out, row_out = tf.while_loop(
                    lambda t, *_: t < j1 - j0, tile_body, (0, hcarry, carry_out, row_out),
                    shape_invariants=(tf.TensorShape([]), any_block, None, None))
                return k + 1, hcarry, carry_out, row_out

            n_batches = (n_x + self.batch - 1) // self.batch
            carry_out = tf.TensorArray(tf.float32, size=n_x, infer_shape=False,
                                       element_shape=any_block)
            row_out = tf.TensorArray(out_dtype, size=n_x, infer_shape=False,
                                     element_shape=out_shape)
            _, _, carry_out, row_out = tf.while_loop(
                lambda k, *_: k < n_batches, batch_body,
                (0, tf.zeros([th, 0, classes]), carry_out, row_out),
                shape_invariants=(tf.TensorShape([]), any_block, None, None))
            # pieces are [rows, width_j(, classes)]: joined side by side
            row = _concat_columns(row_out, out_shape.rank)
            carry = _concat_columns(carry_out, 3)
            carry.set_shape(any_block)
            return i + 1, carry, rows_out.write(i, row)

        rows_out = tf.TensorArray(out_dtype, size=tf.size(ys), infer_shape=False,
                                  element_shape=out_shape)
        _, _, rows_out = tf.while_loop(
            lambda i, *_: i < tf.size(ys), row_body,
            (0, tf.zeros([0, width, classes]), rows_out),
            shape_invariants=(tf.TensorShape([]), any_block, None))
        return rows_out.concat()


def _concat_columns(pieces: tf.TensorArray, rank: int) -> tf.Tensor:
    """Join a row's pieces (each [rows, cols, ...]) along the columns.  TensorArray.concat
    joins along the first axis, so the pieces are joined transposed."""
    count = pieces.size()
    perm = [1, 0] + list(range(2, rank))

    def body(j, acc):
        return j + 1, acc.write(j, tf.transpose(pieces.read(j), perm))

    flipped = tf.TensorArray(pieces.dtype, size=count, infer_shape=False,
                             element_shape=tf.TensorShape([None] * rank))
    _, flipped = tf.while_loop(lambda j, _: j < count, body, (0, flipped))
    return tf.transpose(flipped.concat(), perm)
