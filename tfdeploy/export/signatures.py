"""The served functions of a DeepLab SavedModel.

- ``predict_images``: the seed's contract, byte for byte in names, dtypes and shapes, so
  every client written for the tutorial keeps working.
- ``serving_default``: encoded images in, uint8 masks and palette PNGs out.  A 513x513
  JPEG is ~20x smaller on the wire than its float32 pixels, and clients need no decoder.
- ``logits`` (a plain function, not a signature): used by export verification.
"""

from __future__ import annotations

import zlib

import numpy as np
import tensorflow as tf

from tfdeploy.export.config import DEFAULT_MAX_PIXELS
from tfdeploy.export.model import DeepLabV3
from tfdeploy.export.tiling import TiledModel
from tfdeploy.palette import voc_colormap
from tfdeploy.tfs.names import (
    HEIGHT,
    IMAGE_BYTES,
    IMAGES,
    MASK_PNG,
    PREDICT_IMAGES,
    SEGMENTATION_MAP,
    SERVING_DEFAULT,
    WIDTH,
)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def _crc_table() -> np.ndarray:
    table = np.zeros(256, np.int64)
    for n in range(256):
        c = n
        for _ in range(8):
            c = (0xEDB88320 ^ (c >> 1)) if c & 1 else c >> 1
        table[n] = c
    return table


class PalettePNG(tf.Module):
    """Encodes uint8 class maps as palette PNGs inside the graph.

    ``tf.io.encode_png`` writes greyscale only.  An 8-bit greyscale PNG and an 8-bit
    palette PNG share the same pixel stream, so we keep its IDAT/IEND chunks and swap the
    header for one with colour type 3 plus the VOC ``PLTE`` chunk.  The header's CRC
    depends on width and height, so it is computed with graph ops.
    """

    def __init__(self) -> None:
        super().__init__(name="palette_png")
        self._plte = _chunk(b"PLTE", voc_colormap(256).tobytes())
        self._crc = tf.constant(_crc_table())
        self._bytes = tf.constant([bytes([i]) for i in range(256)])

    def _be32(self, value: tf.Tensor) -> tf.Tensor:
        return tf.stack([tf.bitwise.bitwise_and(tf.bitwise.right_shift(value, s), 0xFF)
                         for s in (24, 16, 8, 0)])

    def __call__(self, mask: tf.Tensor) -> tf.Tensor:
        grey = tf.io.encode_png(mask[..., tf.newaxis])
        shape = tf.cast(tf.shape(mask), tf.int64)
        ihdr = tf.concat([
            tf.constant(list(b"IHDR"), tf.int64),
            self._be32(shape[1]), self._be32(shape[0]),
            tf.constant([8, 3, 0, 0, 0], tf.int64),  # 8 bit, palette, deflate, no interlace
        ], axis=0)
        crc = tf.constant(0xFFFFFFFF, tf.int64)
        for i in range(17):
            idx = tf.bitwise.bitwise_and(tf.bitwise.bitwise_xor(crc, ihdr[i]), 0xFF)
            crc = tf.bitwise.bitwise_xor(tf.gather(self._crc, idx), tf.bitwise.right_shift(crc, 8))
        crc = tf.bitwise.bitwise_xor(crc, 0xFFFFFFFF)
        header = tf.concat([tf.constant([0, 0, 0, 13], tf.int64), ihdr, self._be32(crc)], 0)
        header = tf.strings.reduce_join(tf.gather(self._bytes, header))
        # Greyscale PNG: 8-byte signature + 25-byte IHDR chunk, then the pixel chunks.
        rest = tf.strings.substr(grey, 33, tf.strings.length(grey) - 33)
        return tf.strings.join([_PNG_SIGNATURE, header, self._plte, rest])


def header_size(data: tf.Tensor) -> tf.Tensor:
    """[height, width] (int64) of an encoded image, read from its header without decoding
    it: JPEG (its SOF marker), PNG (IHDR), GIF (logical screen), BMP (info header), WebP
    (VP8, VP8L and VP8X headers).  [0, 0] for anything else (decoding then rejects it,
    or, for JPEG XL, decodes it unchecked).  A few-KB PNG can declare 8000x8000
    pixels; this is how such a decompression bomb is refused before it is decoded."""
    head = tf.strings.substr(tf.strings.join([tf.strings.substr(data, 0, 32), b"\0" * 32]),
                             0, 32)
    b = tf.cast(tf.io.decode_raw(head, tf.uint8), tf.int64)

    def be(i: int, n: int) -> tf.Tensor:
        return sum(b[i + k] * 256 ** (n - 1 - k) for k in range(n))

    def le(i: int, n: int) -> tf.Tensor:
        return sum(b[i + k] * 256 ** k for k in range(n))

    def signed32(v: tf.Tensor) -> tf.Tensor:
        return tf.where(v >= 2 ** 31, v - 2 ** 32, v)

    is_jpeg = tf.logical_and(tf.equal(b[0], 0xFF), tf.equal(b[1], 0xD8))
    is_png = tf.reduce_all(tf.equal(b[:4], tf.constant([0x89, 0x50, 0x4E, 0x47], tf.int64)))
    is_gif = tf.reduce_all(tf.equal(b[:3], tf.constant(list(b"GIF"), tf.int64)))
    is_bmp = tf.reduce_all(tf.equal(b[:2], tf.constant(list(b"BM"), tf.int64)))
    is_webp = tf.logical_and(
        tf.reduce_all(tf.equal(b[:4], tf.constant(list(b"RIFF"), tf.int64))),
        tf.reduce_all(tf.equal(b[8:12], tf.constant(list(b"WEBP"), tf.int64))))
    png = tf.stack([be(20, 4), be(16, 4)])
    gif = tf.stack([le(8, 2), le(6, 2)])
    bmp = tf.stack([tf.abs(signed32(le(22, 4))), tf.abs(signed32(le(18, 4)))])
    # WebP: the chunk after "WEBP" says where the size is (extended, lossy, lossless)
    vp8l = le(21, 4)
    webp = tf.case([
        (tf.equal(b[15], ord("X")), lambda: tf.stack([le(27, 3) + 1, le(24, 3) + 1])),
        (tf.equal(b[15], ord("L")), lambda: tf.stack([(vp8l // 2 ** 14) % 2 ** 14 + 1,
                                                      vp8l % 2 ** 14 + 1])),
    ], default=lambda: tf.stack([le(28, 2) % 2 ** 14, le(26, 2) % 2 ** 14]))
    return tf.case([
        (is_jpeg, lambda: tf.cast(tf.io.extract_jpeg_shape(data)[:2], tf.int64)),
        (is_png, lambda: png), (is_gif, lambda: gif), (is_bmp, lambda: bmp),
        (is_webp, lambda: webp),
    ], default=lambda: tf.zeros([2], tf.int64), exclusive=True)


def check_pixels(height: tf.Tensor, width: tf.Tensor, max_pixels: int) -> tf.Operation:
    """INVALID_ARGUMENT (naming the limit) for an image above ``max_pixels``."""
    side = int(max_pixels ** 0.5)
    limit = f"{side}x{side}" if side * side == max_pixels else f"{max_pixels} pixels"
    pixels = tf.cast(height, tf.int64) * tf.cast(width, tf.int64)
    return tf.debugging.assert_less_equal(
        pixels, tf.constant(max_pixels, tf.int64),
        # no apostrophe: TensorFlow escapes it in the error text (model\\'s)
        message=f"image is larger than this model allows: limit of {limit} "
                f"({max_pixels} pixels; set at export with --max-pixels)")


def _decode(image_bytes: tf.Tensor, max_pixels: int, check=check_pixels) -> tf.Tensor:
    hw = header_size(image_bytes)
    with tf.control_dependencies([check(hw[0], hw[1], max_pixels)]):
        return tf.io.decode_image(image_bytes, channels=3, dtype=tf.uint8,
                                  expand_animations=False)


#: ``segmentation_map`` value outside an image smaller than the largest in its request
#: (Pascal VOC's "void" label); each ``mask_png`` is its own image's exact size.
PAD_LABEL = 255


def decode_batch(image_bytes: tf.Tensor, max_pixels: int, check=check_pixels
                 ) -> tuple[tf.Tensor, tf.Tensor]:
    """Decode every image (each checked against ``max_pixels`` by ``check`` first) and
    zero-pad them to the largest height and width: uint8 [N, H, W, 3] and each image's
    [height, width]."""
    n = tf.size(image_bytes)
    decoded = tf.TensorArray(tf.uint8, size=n, infer_shape=False,
                             element_shape=tf.TensorShape([None, None, 3]))
    sizes = tf.TensorArray(tf.int32, size=n)
    for i in tf.range(n):
        image = _decode(image_bytes[i], max_pixels, check)
        decoded = decoded.write(i, image)
        sizes = sizes.write(i, tf.shape(image)[:2])
    sizes = sizes.stack()
    height, width = tf.reduce_max(sizes[:, 0]), tf.reduce_max(sizes[:, 1])
    padded = tf.TensorArray(tf.uint8, size=n, element_shape=tf.TensorShape([None, None, 3]))
    for i in tf.range(n):
        image = decoded.read(i)
        padded = padded.write(i, tf.pad(image, [[0, height - tf.shape(image)[0]],
                                                [0, width - tf.shape(image)[1]], [0, 0]]))
    return padded.stack(), sizes


class ServingModule(tf.Module):
    """What gets saved: the model's variables plus the serving functions."""

    def __init__(self, model: DeepLabV3, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        super().__init__(name="deeplab_serving")
        self.model = model
        self.png = PalettePNG()
        self.max_pixels = int(max_pixels)  # baked into the graph: TF Serving enforces it too
        #: A TiledModel (export/tiling.py) has its own, larger limit for tiled images and
        #: takes uint8 pixels (it casts one tile batch at a time).
        self.tiled = isinstance(model, TiledModel)

    def _check(self, height: tf.Tensor, width: tf.Tensor, max_pixels: int) -> tf.Operation:
        if self.tiled:
            return self.model.check_pixels(height, width, max_pixels, check_pixels)
        return check_pixels(height, width, max_pixels)

    def _pixels(self, images: tf.Tensor) -> tf.Tensor:
        return images if self.tiled else tf.cast(images, tf.float32)

    @tf.function(input_signature=[
        tf.TensorSpec([1, None, None, 3], tf.float32, name=IMAGES),
        tf.TensorSpec(None, tf.int32, name=HEIGHT),
        tf.TensorSpec(None, tf.int32, name=WIDTH),
    ])
    def predict_images(self, images, height, width):
        # height/width arrive as scalars or shape [1]; the seed reshaped the image with them.
        h = tf.reshape(height, [-1])[0]
        w = tf.reshape(width, [-1])[0]
        with tf.control_dependencies([self._check(h, w, self.max_pixels)]):
            images = tf.reshape(images, tf.stack([1, h, w, 3]))
        return {SEGMENTATION_MAP: self.model.predict(images)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=IMAGE_BYTES)])
    def serving_default(self, image_bytes):
        tf.debugging.assert_positive(
            tf.size(image_bytes), message="image_bytes must hold at least one image")
        images, sizes = decode_batch(image_bytes, self.max_pixels, self._check)
        same = tf.reduce_all(tf.equal(sizes, sizes[0]))
        masks = self._predict_groups(images, sizes, same)

        def png(i):
            return self.png(masks[i, :sizes[i, 0], :sizes[i, 1]])

        pngs = tf.map_fn(png, tf.range(tf.shape(sizes)[0]),
                         fn_output_signature=tf.TensorSpec([], tf.string))
        return {SEGMENTATION_MAP: masks, MASK_PNG: pngs}

    def _predict_groups(self, images: tf.Tensor, sizes: tf.Tensor, same: tf.Tensor
                        ) -> tf.Tensor:
        """uint8 masks [N, H, W] of padded ``images``; pixels outside an image are
        PAD_LABEL.  Same-size images (all a batching server merges from uniform traffic)
        run as one batch.  Mixed sizes run image by image, each cropped to its ``sizes``:
        padding them to one size would change masks (convolutions near the edge and
        DeepLab's image-level pooling see the pad), and each mask must be exactly the one
        its image gets alone.

        Both cases are one loop over groups (one group of N, or N groups of one), so the
        model is called from one place: the server instantiates a signature's graph with
        a copy of every constant per call site, and an int8 model's weights are
        constants (measured, resnet_v2_50 int8: ~100 MB per call site)."""
        n, height, width = tf.shape(sizes)[0], tf.shape(images)[1], tf.shape(images)[2]

        def group(i):
            first, last = tf.where(same, 0, i), tf.where(same, n, i + 1)
            h, w = tf.where(same, height, sizes[i, 0]), tf.where(same, width, sizes[i, 1])
            batch = self._pixels(images[first:last, :h, :w])
            mask = tf.cast(self.model.predict(batch), tf.int32)
            return tf.cast(tf.pad(mask, [[0, 0], [0, height - h], [0, width - w]],
                                  constant_values=PAD_LABEL), tf.uint8)

        masks = tf.map_fn(group, tf.range(tf.where(same, 1, n)),
                          fn_output_signature=tf.TensorSpec([None, None, None], tf.uint8))
        return tf.reshape(masks, [n, height, width])

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    def logits(self, images):
        return self.model.logits(images)

    def signatures(self) -> dict[str, tf.types.experimental.GenericFunction]:
        """The signatures, for ``tf.saved_model.save`` to trace.  Not traced here: save
        traces the module's functions again in its own context, and a function traced
        outside it was written twice, an int8 model's weight constants with it (the
        resnet_v2_50 int8 SavedModel: 81.6 MB traced before save, 42.7 MB by save)."""
        return {PREDICT_IMAGES: self.predict_images, SERVING_DEFAULT: self.serving_default}
