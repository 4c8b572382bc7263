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
   tops): 41 MB kept.  It runs on a thread of its own when the last graph run in flight
   ends (``running``), so no answer waits for it, and only when the process is more than
   ``KEEP_BYTES`` above its size after the last trim: a trim after every run made the
   next run fault every page of its tensors back in, and a client sending one 513x513
   image after another waited for that (resnet_v2_50 OS16, one gRPC request at a time,
   AMD EPYC Zen 5, 2 cores: int8 150 ms per answer with a trim after every run, 105 ms
   without; float32 262 and 235 ms).  A run of that size keeps about 300 MB (int8) or
   110 MB (float32) between requests; what a large image leaves above ``KEEP_BYTES``
   goes back at once (demo export, 2048x2048: 394 MB kept, 1.35 GB at the peak).
3. That bound holds because the process has one malloc arena (``use_system_allocator``
   sets ``M_ARENA_MAX`` to 1 unless the environment chose): with glibc's default of 8
   per core, the next run allocated on another thread's arena while the last run's
   pages sat free in the first, so the peak grew with each image (and glibc's automatic
   trimming of those arenas faulted 30,000 pages back in per int8 run).
4. Within that arena glibc still hands memory back on its own: tensors above its mmap
   threshold (which grows to 32 MB at most) are mapped and unmapped per run, and a free
   top of the heap above its trim threshold is given back at once, so the next run faulted
   those pages in again (demo export, 513x513 requests one after another: 0 to 24,000
   page faults per request, varying between server runs).  Both thresholds are set to
   ``KEEP_BYTES``: what is kept is then this module's decision alone (a request faults 0
   pages in most runs, the rare rest 1,000-4,700: 25 requests in 5 server runs).
Where the C library has no ``malloc_trim``/``mallopt`` (musl, macOS) this does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import threading
from collections.abc import Iterator

#: Memory a run may leave in the process above its size after the last trim and keep
#: for the next run (the working set of a typical request); beyond it, trim at once.
KEEP_BYTES = 512 << 20
_M_ARENA_MAX = -8                     # mallopt's parameter numbers in glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_M_TRIM_THRESHOLD = -1

_lock = threading.Lock()
_in_flight = 0
_trim = None
_trimmed_rss: int | None = None       # the process's RSS after the last trim
_idle = threading.Event()             # set when the last run in flight ended
_trimmer: threading.Thread | None = None


def _malloc_trim():
    """libc's malloc_trim, or None when there is none."""
    global _trim
    if _trim is None:
        _trim = getattr(_libc(), "malloc_trim", None) or False
        if _trim:
            _trim.argtypes, _trim.restype = [ctypes.c_size_t], ctypes.c_int
    return _trim or None


@functools.cache
def _libc():
    """The C library, loaded once (find_library may run ldconfig)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or None)
    except OSError:
        return None


def use_system_allocator() -> None:
    """Make TensorFlow's oneDNN CPU allocator use malloc instead of its own pool that
    never shrinks, from one malloc arena that keeps up to ``KEEP_BYTES`` (points 3 and 4
    above); must run before TensorFlow is imported (its threads would make arenas of their
    own).  Explicit settings win: ``TF_ONEDNN_USE_SYSTEM_ALLOCATOR``; ``MALLOC_ARENA_MAX``
    or an ``arena_max`` tunable; ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` or
    their tunables (``GLIBC_TUNABLES``)."""
    os.environ.setdefault("TF_ONEDNN_USE_SYSTEM_ALLOCATOR", "1")
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if "MALLOC_ARENA_MAX" not in os.environ and "arena_max" not in tunables:
        mallopt(_M_ARENA_MAX, 1)
    if not any(name in os.environ for name in ("MALLOC_MMAP_THRESHOLD_",
                                               "MALLOC_TRIM_THRESHOLD_")) and not any(
            name in tunables for name in ("mmap_threshold", "trim_threshold")):
        mallopt(_M_MMAP_THRESHOLD, KEEP_BYTES)
        mallopt(_M_TRIM_THRESHOLD, KEEP_BYTES)


def _rss() -> int | None:
    """This process's resident bytes, or None where /proc is not there."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def release_memory() -> bool:
    """Return the C heap's free pages to the operating system; True when some were."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim else False


def trim_if_large(keep: int = KEEP_BYTES) -> bool:
    """``release_memory`` when the process is more than ``keep`` bytes above its size
    after the last trim (always where that size cannot be read); True when it trimmed."""
    global _trimmed_rss
    rss = _rss()
    if rss is not None and _trimmed_rss is not None and rss - _trimmed_rss <= keep:
        _trimmed_rss = min(_trimmed_rss, rss)  # a version unloaded: a lower floor
        return False
    release_memory()
    _trimmed_rss = _rss()
    return True


def _trim_when_idle() -> None:
    while True:
        _idle.wait()
        _idle.clear()
        trim_if_large()


@contextlib.contextmanager
def running() -> Iterator[None]:
    """Around one graph run: when the last run in flight ends, ``trim_if_large`` on the
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
