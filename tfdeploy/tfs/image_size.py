"""The pixel count of an encoded image, read from its header without decoding it.

The server admits inference by pixels in flight (what decoding and the model cost grows
with), so it needs an image's size before any decoder runs: a few-KB PNG can declare
8000x8000 pixels.  TensorFlow-free (the export's in-graph reader, ``header_size`` in
``export/signatures.py``, does the same inside the served graph).  Formats: JPEG (its
SOF marker), PNG (IHDR), GIF (logical screen), BMP (info header), WebP (VP8, VP8L, VP8X).
"""

from __future__ import annotations

_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD,
                       0xCE, 0xCF})
#: How far into a JPEG the SOF marker is looked for (EXIF and ICC segments come first).
JPEG_SCAN_BYTES = 1 << 20


def _jpeg(data: bytes) -> tuple[int, int] | None:
    i, end = 2, min(len(data), JPEG_SCAN_BYTES)
    while i + 4 <= end:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length
            i += 2
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker in _JPEG_SOF and i + 9 <= len(data):
            return (int.from_bytes(data[i + 5:i + 7], "big"),
                    int.from_bytes(data[i + 7:i + 9], "big"))
        if marker == 0xDA or length < 2:  # scan data before any frame header: give up
            return None
        i += 2 + length
    return None


def image_hw(data: bytes) -> tuple[int, int] | None:
    """(height, width) from an encoded image's header, or None when it is not one of the
    formats above (or its header is cut short)."""
    if data[:2] == b"\xff\xd8":
        return _jpeg(data)
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return int.from_bytes(data[20:24], "big"), int.from_bytes(data[16:20], "big")
    if data[:3] == b"GIF" and len(data) >= 10:
        return int.from_bytes(data[8:10], "little"), int.from_bytes(data[6:8], "little")
    if data[:2] == b"BM" and len(data) >= 26:
        width = int.from_bytes(data[18:22], "little", signed=True)
        height = int.from_bytes(data[22:26], "little", signed=True)
        return abs(height), abs(width)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        chunk = data[12:16]
        if chunk == b"VP8 ":
            return (int.from_bytes(data[28:30], "little") & 0x3FFF,
                    int.from_bytes(data[26:28], "little") & 0x3FFF)
        if chunk == b"VP8L":
            bits = int.from_bytes(data[21:25], "little")
            return ((bits >> 14) & 0x3FFF) + 1, (bits & 0x3FFF) + 1
        if chunk == b"VP8X":
            return (int.from_bytes(data[27:30], "little") + 1,
                    int.from_bytes(data[24:27], "little") + 1)
    return None


def image_pixels(data: bytes) -> int | None:
    """height x width of an encoded image from its header, or None (see ``image_hw``)."""
    hw = image_hw(data)
    return None if hw is None else hw[0] * hw[1]
