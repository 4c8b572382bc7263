"""TFRecord files without TensorFlow: the framing of ``assets.extra/tf_serving_warmup_requests``
and of the embedded server's request logs.

Each record is ``length`` (uint64, little-endian), the masked CRC-32C of those 8 bytes,
``data``, the masked CRC-32C of ``data`` (both uint32, little-endian); TensorFlow's
``TFRecordDataset`` reads what is written here and the other way round.

CRC-32C comes from the ``google-crc32c`` wheel (C, hardware-accelerated where the CPU has
it).  Why not the alternatives (``bench/request_log.py``, AMD EPYC): a pure-Python table
CRC runs at 0.44 MB/s, over two seconds holding the GIL per megabyte of image, and a
request logger's writer thread must not slow requests down; framing with the wheel and
writing comes within 15% of ``tf.io.TFRecordWriter`` (276 vs 317 MB/s), which would need
TensorFlow where ``tfdeploy requests`` (a reader) should not import it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import google_crc32c

_MASK_DELTA = 0xA282EAD8


def masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC-32C of ``data``: rotated right 15 bits plus a constant, so
    a CRC stored inside checksummed data does not checksum to itself."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
    """One record, framed: what is appended to a TFRecord file for ``data``."""
    length = struct.pack("<Q", len(data))
    return b"".join((length, struct.pack("<I", masked_crc(length)), data,
                     struct.pack("<I", masked_crc(data))))


def framed_size(data_len: int) -> int:
    """Bytes a record of ``data_len`` bytes takes in a file."""
    return data_len + 16


def read_records(path: str | Path) -> Iterator[bytes]:
    """The records of a TFRecord file, checked.  A record cut short at the end (a file
    still being written, or a writer that was killed) ends the file silently; a record
    whose checksum does not match raises ValueError naming the file and offset."""
    with open(path, "rb") as f:
        offset = 0
        while True:
            head = f.read(12)
            if len(head) < 12:
                return
            length, length_crc = struct.unpack("<QI", head)
            if masked_crc(head[:8]) != length_crc:
                raise ValueError(f"{path}: corrupt record length at byte {offset}")
            data = f.read(length)
            tail = f.read(4)
            if len(data) < length or len(tail) < 4:
                return
            if masked_crc(data) != struct.unpack("<I", tail)[0]:
                raise ValueError(f"{path}: corrupt record data at byte {offset}")
            offset += framed_size(length)
            yield data
