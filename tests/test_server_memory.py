"""The embedded server gives a large image's memory back: a real server, a real PNG over
gRPC on 127.0.0.1, the server process's RSS read from the operating system."""

from __future__ import annotations

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
