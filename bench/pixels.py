"""What one image costs the embedded server, per pixel: time, peak RSS, RSS kept after.

    .venv/bin/python bench/pixels.py [--models demo,resnet50] [--sizes 256,512,1024,2048]
                                     [--env NAME=VALUE ...]

For each model (the bundled demo export, and a random-weight resnet_v2_50 OS16 export with
21 classes) a fresh ``tfdeploy-model-server`` serves it on 127.0.0.1; one gRPC Predict per
size (smallest first) sends a PNG of that size as ``image_bytes`` and asks for ``mask_png``,
as ``tfdeploy predict`` does.  Before each request the server's peak RSS is reset
(``/proc/PID/clear_refs``), after it ``VmHWM`` is its peak.  Printed per request: seconds,
peak RSS above the idle server, that per pixel, and the RSS the server keeps 1 s after the
answer.  Last, a least-squares fit ``peak - idle ~= a + b x pixels`` per model: the figure
the README's "Under faults" formula and the export's default pixel limit come from.

``--env NAME=VALUE`` sets a variable in the servers' environment (to compare allocator
settings, e.g. ``--env TF_ONEDNN_USE_SYSTEM_ALLOCATOR=0`` for oneDNN's own pool).

``--ab SIZE`` instead times the allocator choice: two servers of each model, one with
malloc (``TF_ONEDNN_USE_SYSTEM_ALLOCATOR=1``, the server's default) and one with oneDNN's
pool (``=0``), answer SIZE x SIZE images in turn (``--requests`` each, after one
untimed); printed: each one's median seconds and their ratio (goal: malloc / pool <= 1.05).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from servers import ServerProcess  # noqa: E402
from workdir import add_keep_option, work_dir  # noqa: E402

MB = 1 << 20


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def rss(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} for {pid}")


def reset_peak(pid: int) -> None:
    """VmHWM back to the current RSS (Linux: 5 > clear_refs); sampled peaks otherwise."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass


class PeakSampler:
    """RSS sampled every 10 ms: a lower bound on the peak where clear_refs is refused."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss(self.pid))
            time.sleep(0.01)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def export_models(work: Path, names: list[str]) -> dict[str, Path]:
    from tfdeploy.export.checkpoint import write_checkpoint
    from tfdeploy.export.config import ModelConfig
    from tfdeploy.export.model import random_weights
    from tfdeploy.export.writer import export

    bases = {}
    for name in names:
        base = work / name
        if name == "demo":
            export(None, base, do_verify=False, max_pixels=4096 * 4096)
        elif name == "resnet50":
            cfg = ModelConfig()           # resnet_v2_50, output stride 16, 21 classes
            write_checkpoint(work / "ckpt", cfg, random_weights(cfg))
            export(work / "ckpt", base, do_verify=False, max_pixels=4096 * 4096)
        else:
            raise SystemExit(f"unknown model {name!r} (demo, resnet50)")
        bases[name] = base
    return bases


def png_of(size: int) -> bytes:
    from tfdeploy.export.warmup import encode_png, probe_image

    return encode_png(probe_image(size, size))


def measure(base: Path, work: Path, sizes: list[int]) -> tuple[int, list[tuple]]:
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    srv = ServerProcess("--model_name=deeplab", f"--model_base_path={base}", log_dir=work)
    rows = []
    try:
        srv.wait_available(1)
        pid = srv.proc.pid
        stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(
            srv.grpc_target, options=[("grpc.max_receive_message_length", -1)]))
        time.sleep(1)
        idle = rss(pid)
        for size in sizes:
            req = request_of(size)
            reset_peak(pid)
            sampler = PeakSampler(pid)
            start = time.perf_counter()
            stub.Predict(req, 600)
            seconds = time.perf_counter() - start
            peak = max(sampler.stop(), rss(pid, "VmHWM"))
            time.sleep(1)
            rows.append((size, seconds, peak - idle, rss(pid) - idle))
        return idle, rows
    finally:
        srv.stop()


def request_of(size: int):
    from tensorflow_serving.apis import predict_pb2

    from tfdeploy.tfs.tensors import to_proto

    req = predict_pb2.PredictRequest()
    req.model_spec.name = "deeplab"
    req.inputs["image_bytes"].CopyFrom(to_proto(np.array([png_of(size)], dtype=object)))
    req.output_filter.append("mask_png")
    return req


def allocator_ab(base: Path, work: Path, size: int, requests: int) -> tuple[float, float]:
    """Median seconds per request with malloc and with oneDNN's pool, served in turn."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    servers = []
    try:
        for value in ("1", "0"):
            os.environ["TF_ONEDNN_USE_SYSTEM_ALLOCATOR"] = value
            servers.append(ServerProcess("--model_name=deeplab",
                                         f"--model_base_path={base}", log_dir=work))
        stubs = []
        for srv in servers:
            srv.wait_available(1)
            stubs.append(prediction_service_pb2_grpc.PredictionServiceStub(
                grpc.insecure_channel(srv.grpc_target)))
        req = request_of(size)
        times: list[list[float]] = [[], []]
        for i in range(requests + 1):
            for k, stub in enumerate(stubs):
                start = time.perf_counter()
                stub.Predict(req, 600)
                if i:
                    times[k].append(time.perf_counter() - start)
        return float(np.median(times[0])), float(np.median(times[1]))
    finally:
        os.environ.pop("TF_ONEDNN_USE_SYSTEM_ALLOCATOR", None)
        for srv in servers:
            srv.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="demo,resnet50")
    ap.add_argument("--sizes", default="256,512,1024,2048")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("--ab", type=int, default=0, metavar="SIZE",
                    help="time malloc against oneDNN's pool at SIZE x SIZE instead")
    ap.add_argument("--requests", type=int, default=8, help="timed requests (--ab)")
    add_keep_option(ap)
    args = ap.parse_args()
    print(f"CPU: {cpu_name()} ({os.cpu_count()} cores)", flush=True)
    for item in args.env:
        name, _, value = item.partition("=")
        os.environ[name] = value
    if args.env:
        print("server environment:", " ".join(args.env))
    sizes = [int(s) for s in args.sizes.split(",")]
    work = work_dir("pixels", args.keep)
    bases = export_models(work, args.models.split(","))
    if args.ab:
        for name, base in bases.items():
            malloc, pool = allocator_ab(base, work, args.ab, args.requests)
            print(f"{name} {args.ab}x{args.ab}: malloc {malloc:.3f} s, oneDNN pool "
                  f"{pool:.3f} s, malloc / pool {malloc / pool:.2f} (goal <= 1.05)")
        return
    for name, base in bases.items():
        idle, rows = measure(base, work, sizes)
        print(f"\n{name}: idle RSS {idle / MB:.0f} MB")
        print(f"{'size':>11} {'seconds':>8} {'peak-idle MB':>13} {'B/pixel':>8} "
              f"{'kept MB':>8} {'us/pixel':>9}")
        for size, seconds, peak, kept in rows:
            px = size * size
            print(f"{size:>5}x{size:<5} {seconds:8.2f} {peak / MB:13.0f} {peak / px:8.0f} "
                  f"{kept / MB:8.0f} {seconds / px * 1e6:9.3f}")
        px = np.array([r[0] ** 2 for r in rows], float)
        b, a = np.polyfit(px, np.array([r[2] for r in rows], float), 1)
        tb, ta = np.polyfit(px, np.array([r[1] for r in rows], float), 1)
        print(f"fit: peak - idle ~= {a / MB:.0f} MB + {b:.0f} B x pixels; "
              f"time ~= {ta:.2f} s + {tb * 1e6:.3f} us x pixels")


if __name__ == "__main__":
    main()
