"""Giving a large run's memory back to the operating system.

A 2048x2048 image makes the demo export's graph allocate about 1.6 GB of intermediate
tensors (bench/pixels.py).  The server stayed 1.6 GB above its idle size after one such
image (3 GB after a 3200x2400 one) until it exited, for two reasons, measured with
bench/pixels.py (demo export, 1024x1024 then 2048x2048, RSS kept 1 s after the answer):

1. TensorFlow's oneDNN build (on by default on x86) allocates large tensors from a pool
   of its own (a BFC allocator) that grows to the largest run and never shrinks: 1,612
   MB kept.  ``MALLOC_ARENA_MAX=2`` (1,570 MB) and ``MALLOC_MMAP_THRESHOLD_`` (1,602 MB)
   change nothing, since the memory never reaches malloc.
   ``TF_ONEDNN_USE_SYSTEM_ALLOCATOR=1`` makes that allocator use malloc: 279 MB kept, and
   the peak of the 2048x2048 run falls from 1.65 GB to 1.1-1.25 GB (freed tensors are
   reused within the run instead of the pool growing).  ``use_system_allocator`` sets it
   in the server process before TensorFlow starts, unless it is set already (=0 keeps
   the pool).  Turning oneDNN off (``TF_ENABLE_ONEDNN_OPTS=0``) also frees it, but
   changes the kernels that compute the numbers.
2. glibc keeps what was freed in its arenas: ``malloc_trim(0)`` hands every free page of
   every arena back (glibc 2.8+ releases pages inside the heaps too, not only at their
   tops): 41 MB kept.  It runs when the last graph run in flight ends (``running``), so
   a busy server does not pay for it, on a thread of its own, so no answer waits for it.
   Where the C library has no ``malloc_trim`` (musl, macOS) it does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import threading
from collections.abc import Iterator

_lock = threading.Lock()
_in_flight = 0
_trim = None
_idle = threading.Event()             # set when the last run in flight ended
_trimmer: threading.Thread | None = None


def _malloc_trim():
    """libc's malloc_trim, or None when there is none."""
    global _trim
    if _trim is None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
            _trim = libc.malloc_trim
            _trim.argtypes, _trim.restype = [ctypes.c_size_t], ctypes.c_int
        except (OSError, AttributeError):
            _trim = False
    return _trim or None


def use_system_allocator() -> None:
    """Make TensorFlow's oneDNN CPU allocator use malloc instead of its own pool that
    never shrinks; must run before TensorFlow is imported.  An explicit setting wins."""
    os.environ.setdefault("TF_ONEDNN_USE_SYSTEM_ALLOCATOR", "1")


def release_memory() -> bool:
    """Return the C heap's free pages to the operating system; True when some were."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim else False


def _trim_when_idle() -> None:
    while True:
        _idle.wait()
        _idle.clear()
        release_memory()


@contextlib.contextmanager
def running() -> Iterator[None]:
    """Around one graph run: when the last run in flight ends, ``release_memory`` on the
    trimming thread (started on first use)."""
    global _in_flight, _trimmer
    with _lock:
        _in_flight += 1
        if _trimmer is None and _malloc_trim() is not None:
            _trimmer = threading.Thread(target=_trim_when_idle, name="malloc-trim",
                                        daemon=True)
            _trimmer.start()
    try:
        yield
    finally:
        with _lock:
            _in_flight -= 1
            if _in_flight == 0:
                _idle.set()
