"""How the request logger frames TFRecords: CRC-32C from the ``google-crc32c`` wheel,
against a pure-Python table CRC and TensorFlow's ``tf.io.TFRecordWriter``, on one
record of 1 MiB (an encoded photograph with its mask).  Prints MB/s and ratios measured
in this run, with the CPU.

    .venv/bin/python bench/request_log.py
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from tfdeploy.tfs import tfrecord

DATA = os.urandom(1 << 20)


def _table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


TABLE = _table()


def pure_python_crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def rate(fn, size: int, repeat: int) -> float:
    """MB/s of ``fn`` over ``repeat`` calls on ``size`` bytes."""
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return size * repeat / (time.perf_counter() - start) / 1e6


def main() -> None:
    import google_crc32c

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                .splitlines() if line.startswith("model name")), "unknown CPU")
    assert pure_python_crc32c(DATA[:4096]) == google_crc32c.value(DATA[:4096])
    wheel = rate(lambda: tfrecord.frame(DATA), len(DATA), 200)
    small = DATA[:64 << 10]
    python = rate(lambda: pure_python_crc32c(small), len(small), 2)
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp:
        with tf.io.TFRecordWriter(str(Path(tmp) / "x.tfrecord")) as writer:
            tf_rate = rate(lambda: writer.write(DATA), len(DATA), 200)
        with open(Path(tmp) / "y.tfrecord", "wb") as f:
            ours = rate(lambda: f.write(tfrecord.frame(DATA)), len(DATA), 200)
    print(f"CPU: {cpu}")
    print(f"frame (google-crc32c):       {wheel:9.1f} MB/s")
    print(f"frame + write (ours):        {ours:9.1f} MB/s")
    print(f"tf.io.TFRecordWriter.write:  {tf_rate:9.1f} MB/s  (ours / TF: {ours / tf_rate:.2f})")
    print(f"pure-Python CRC-32C:         {python:9.3f} MB/s  (google-crc32c / Python: "
          f"{wheel / python:.0f}x)")


if __name__ == "__main__":
    main()
