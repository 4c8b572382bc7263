"""The embedded server gives a large image's memory back: a real server, a real PNG over
gRPC on 127.0.0.1, the server process's RSS read from the operating system."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
from servers import ServerProcess

from tfdeploy.client.pool import connect
from tfdeploy.export.warmup import encode_png, probe_image

MB = 1 << 20


def test_rss_returns_close_to_idle_after_a_large_image(demo_base, tmp_path):
    """Before: one 1536x1536 image left the server ~900 MB above its idle size for good
    (TensorFlow's oneDNN pool, then glibc's arenas).  Now it comes back within 300 MB."""
    srv = ServerProcess("--model_name=deeplab", f"--model_base_path={demo_base}",
                        log_dir=tmp_path)
    try:
        srv.wait_available(1)
        process = psutil.Process(srv.proc.pid)
        pool = connect(srv.grpc_target, "grpc", timeout=300, retries=0)
        small = encode_png(probe_image(64, 48))
        assert pool.predict_png("deeplab", small)[:4] == b"\x89PNG"
        time.sleep(0.5)
        idle = process.memory_info().rss
        large = encode_png(probe_image(1536, 1536))
        assert pool.predict_png("deeplab", large)[:4] == b"\x89PNG"
        deadline = time.monotonic() + 5
        while (kept := process.memory_info().rss - idle) > 300 * MB:
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert kept <= 300 * MB, f"server kept {kept // MB} MB above idle"
        assert pool.predict_png("deeplab", small)[:4] == b"\x89PNG"   # and still serves
    finally:
        srv.stop()


def _minor_faults(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[7])


def test_a_typical_request_keeps_its_memory_for_the_next(demo_base, tmp_path):
    """One 513x513 image after another: the server keeps what a run freed (well under
    memory.KEEP_BYTES) for the next run instead of handing it back and faulting every
    page in again.  Before: a trim after every run, ~25,000-40,000 page faults in every
    request here; now some request of five faults fewer than 2,000 (8 MB)."""
    srv = ServerProcess("--model_name=deeplab", f"--model_base_path={demo_base}",
                        log_dir=tmp_path)
    try:
        srv.wait_available(1)
        pool = connect(srv.grpc_target, "grpc", timeout=300, retries=0)
        image = encode_png(probe_image(513, 513))
        for _ in range(3):
            assert pool.predict_png("deeplab", image)[:4] == b"\x89PNG"
        faults = []
        for _ in range(5):
            before = _minor_faults(srv.proc.pid)
            assert pool.predict_png("deeplab", image)[:4] == b"\x89PNG"
            time.sleep(0.3)  # the trimming thread's turn, had it trimmed
            faults.append(_minor_faults(srv.proc.pid) - before)
        assert min(faults) < 2000, f"page faults per request: {faults}"
    finally:
        srv.stop()


_ARENAS = r"""
import ctypes, ctypes.util, os, sys, tempfile, threading
from tfdeploy.serving import memory
memory.use_system_allocator()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.fopen.restype, libc.fopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
together = threading.Barrier(6)
kept = []

def allocate():
    kept.append(libc.malloc(4096))  # a thread's first malloc picks its arena
    together.wait()                 # all alive at once: none inherits a freed arena

threads = [threading.Thread(target=allocate) for _ in range(5)]
for t in threads:
    t.start()
together.wait()
for t in threads:
    t.join()
path = os.path.join(tempfile.mkdtemp(), "info.xml")
fp = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, fp)
libc.fclose(fp)
print(open(path).read().count("<heap nr="))
"""


def _arenas(**env: str) -> int:
    """How many malloc arenas a process has after use_system_allocator() and five
    threads allocating at once (glibc gives each new thread a new arena by default)."""
    environ = {k: v for k, v in os.environ.items()
               if k not in ("MALLOC_ARENA_MAX", "GLIBC_TUNABLES")}
    out = subprocess.run([sys.executable, "-c", _ARENAS], env={**environ, **env},
                         capture_output=True, text=True, timeout=60, check=True)
    return int(out.stdout)


def test_the_server_allocates_from_one_malloc_arena_unless_told_otherwise():
    # one arena is what lets the next request reuse the pages the last one freed
    assert _arenas() == 1
    assert _arenas(MALLOC_ARENA_MAX="3") == 3  # the user's setting wins
    assert _arenas(GLIBC_TUNABLES="glibc.malloc.arena_max=2") == 2


_KEEPS = r"""
import ctypes, ctypes.util
from tfdeploy.serving import memory
memory.use_system_allocator()

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.mallinfo2.restype = MallInfo2
block = libc.malloc(64 << 20)         # a large tensor
ctypes.memset(block, 1, 64 << 20)
mapped = libc.mallinfo2().hblkhd      # bytes in blocks of their own mapping
libc.free(block)
print(mapped >= 64 << 20, libc.mallinfo2().arena >= 64 << 20)
"""


def _keeps(**env: str) -> tuple[bool, bool]:
    """(a 64 MB block was mapped on its own, the arena still holds 64 MB once it is
    freed) in a process after use_system_allocator()."""
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", _KEEPS], env={**environ, **env},
                         capture_output=True, text=True, timeout=60, check=True)
    mapped, kept = out.stdout.split()
    return mapped == "True", kept == "True"


def test_a_freed_large_tensor_stays_in_the_arena_for_the_next_run():
    # glibc's own defaults map a 64 MB block by itself and unmap it when freed: the next
    # request faults every page of it in again (memory.py, point 4)
    assert _keeps() == (False, True)
    # the user's settings win
    assert _keeps(MALLOC_MMAP_THRESHOLD_=str(1 << 20)) == (True, False)
    assert _keeps(GLIBC_TUNABLES="glibc.malloc.trim_threshold=131072") == (True, False)
