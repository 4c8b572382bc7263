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


class CutShort(ValueError):
    """The file ends inside a record (a writer killed mid-record, or a copy cut off);
    ``offset`` is where that record starts: everything before it was read."""

    def __init__(self, path: str | Path, offset: int) -> None:
        super().__init__(f"{path}: the file ends inside the record at byte {offset} "
                         "(cut short: a writer stopped mid-record, or a copy was cut off)")
        self.offset = offset


def read_records(path: str | Path) -> Iterator[bytes]:
    """The records of a TFRecord file, checked.  A record cut short at the end (a file
    still being written, or a writer that was killed) ends the file silently; a record
    whose checksum does not match raises ValueError naming the file and offset."""
    try:
        for _, data in records_at(path):
            yield data
    except CutShort:
        return


def records_at(path: str | Path) -> Iterator[tuple[int, bytes]]:
    """(offset, data) of each record of a TFRecord file, checked; ``CutShort`` when the
    file ends inside a record, ValueError naming the offset for a checksum that does not
    match.  Offsets let a reader keep only a list and fetch one record later
    (``record_at``) instead of holding every image of a log in memory."""
    with open(path, "rb") as f:
        offset = 0
        while True:
            head = f.read(12)
            if not head:
                return
            if len(head) < 12:
                raise CutShort(path, offset)
            data = _body(f, path, offset, head)
            yield offset, data
            offset += framed_size(len(data))


def record_at(path: str | Path, offset: int) -> bytes:
    """The record starting at byte ``offset`` of a TFRecord file, checked like
    ``records_at``."""
    with open(path, "rb") as f:
        f.seek(offset)
        head = f.read(12)
        if len(head) < 12:
            raise CutShort(path, offset)
        return _body(f, path, offset, head)


def _body(f, path: str | Path, offset: int, head: bytes) -> bytes:
    length, length_crc = struct.unpack("<QI", head)
    if masked_crc(head[:8]) != length_crc:
        raise ValueError(f"{path}: corrupt record length at byte {offset}")
    data = f.read(length)
    tail = f.read(4)
    if len(data) < length or len(tail) < 4:
        raise CutShort(path, offset)
    if masked_crc(data) != struct.unpack("<I", tail)[0]:
        raise ValueError(f"{path}: corrupt record data at byte {offset}")
    return data
