"""The client under server faults, over real sockets on 127.0.0.1: a hung endpoint is
skipped, and a server restart in the middle of a folder run is outlasted, with every
image answered exactly once.  Bounded: a few dozen small images, deadlines of seconds."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT
from servers import ServerProcess

EXAMPLES = sorted((ROOT / "examples").glob("*.jpg"))


def folder_of(tmp_path, count: int):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(count):
        shutil.copy(EXAMPLES[i % len(EXAMPLES)], folder / f"img_{i:04d}.jpg")
    return folder


def start(demo_base, log_dir, **ports) -> ServerProcess:
    srv = ServerProcess("--model_name=deeplab", f"--model_base_path={demo_base}",
                        log_dir=log_dir, **ports)
    srv.wait_available(1)
    return srv


def predict_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "tfdeploy", "predict", "--json", *args]


def check_every_image_once(stdout: str, folder, out) -> dict:
    doc = json.loads(stdout)
    paths = [r["path"] for r in doc["results"]]
    assert sorted(paths) == sorted(str(p) for p in folder.iterdir())  # no duplicate, no loss
    assert all(r["error"] is None for r in doc["results"]), doc["summary"]
    assert len(list(out.glob("*.png"))) == len(paths)
    return doc


@pytest.fixture
def two_servers(demo_base, tmp_path):
    servers = [start(demo_base, tmp_path), start(demo_base, tmp_path)]
    yield servers
    for srv in servers:
        os.kill(srv.proc.pid, signal.SIGCONT)
        srv.stop()


def test_hung_endpoint_is_skipped(two_servers, tmp_path):
    """A SIGSTOPped server accepts connections but never answers: after one deadline
    (also for the metadata call, which goes to it first) the client uses the other."""
    hung, healthy = two_servers
    os.kill(hung.proc.pid, signal.SIGSTOP)
    folder, out = folder_of(tmp_path, 12), tmp_path / "out"
    proc = subprocess.run(
        predict_cmd(str(folder), "-o", str(out), "-j", "2", "--timeout", "3",
                    "--server", f"{hung.grpc_target},{healthy.grpc_target}"),
        capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    doc = check_every_image_once(proc.stdout, folder, out)
    assert doc["summary"]["endpoints"][hung.grpc_target] == 0
    assert doc["summary"]["endpoints"][healthy.grpc_target] == 12  # predictions only
    assert "failed; using the others" in proc.stderr


def test_restart_is_outlasted(demo_base, tmp_path):
    """The server is stopped after the first masks are written and started again on the
    same ports; the run finishes with every image answered once.  Retries are bounded by
    time only: on a loaded machine the restart (TensorFlow import, load, warmup) can take
    longer than the default ten retries' backoff."""
    srv = start(demo_base, tmp_path)
    folder, out = folder_of(tmp_path, 120), tmp_path / "out"
    client = subprocess.Popen(
        predict_cmd(str(folder), "-o", str(out), "--server", srv.grpc_target,
                    "--retry-timeout", "120", "--retries", "1000"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    restarted = None
    try:
        deadline = time.monotonic() + 120
        while len(list(out.glob("*.png"))) < 10:
            assert client.poll() is None, client.communicate()
            assert time.monotonic() < deadline, "no masks written"
            time.sleep(0.05)
        assert srv.stop() == 0
        down_at = time.monotonic()
        time.sleep(1.0)
        restarted = start(demo_base, tmp_path, grpc_port=srv.grpc_port,
                          rest_port=srv.rest_port)
        downtime = time.monotonic() - down_at
        stdout, stderr = client.communicate(timeout=300)
    finally:
        if client.poll() is None:
            client.kill()
        if restarted:
            restarted.stop()
    assert client.returncode == 0, stderr
    doc = check_every_image_once(stdout, folder, out)
    assert doc["summary"]["ok"] == 120
    assert downtime > 1.0  # the server really was away while the client kept going


def test_masks_follow_the_umask(tmp_path):
    """Output files get 0666 less the umask, like any file the user's tools write."""
    code = ("import os, sys\nos.umask(int(sys.argv[1], 8))\n"
            "from pathlib import Path\nfrom tfdeploy.client import masks\n"
            "masks.save_atomic(b'data', Path(sys.argv[2]))\n")
    for umask, mode in (("022", 0o644), ("077", 0o600), ("002", 0o664)):
        target = tmp_path / f"m{umask}.png"
        subprocess.run([sys.executable, "-c", code, umask, str(target)], check=True)
        assert target.stat().st_mode & 0o777 == mode
        assert target.read_bytes() == b"data"
    assert not list(tmp_path.glob(".*.tmp"))


def test_each_transport_connects_for_itself():
    """gRPC shares one connection per address and options across a process's channels
    unless told otherwise; then a new transport inherits an old one's failure (a hung or
    restarted server that had the port) and fails its first call at once with that
    error.  Two transports to one gRPC server must arrive from two client sockets."""
    from concurrent import futures

    import grpc

    from tfdeploy.client.base import ClientError
    from tfdeploy.client.grpc_transport import GrpcTransport

    peers = []

    def metadata(request: bytes, context):
        peers.append(context.peer())
        context.abort(grpc.StatusCode.NOT_FOUND, "no such model")

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "tensorflow.serving.PredictionService",
        {"GetModelMetadata": grpc.unary_unary_rpc_method_handler(metadata)})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    transports = [GrpcTransport(f"127.0.0.1:{port}", timeout=10.0) for _ in range(2)]
    try:
        for transport in transports:
            with pytest.raises(ClientError) as failed:
                transport.metadata("deeplab")
            assert failed.value.code == "NOT_FOUND", failed.value
    finally:
        for transport in transports:
            transport.close()
        server.stop(None)
    assert len(peers) == 2 and peers[0] != peers[1], peers  # two client ports
