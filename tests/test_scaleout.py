"""Several servers: the client spreads requests round robin and survives one going away;
the generated compose file runs for real with the locally built serving image."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT, run_cli
from PIL import Image
from servers import ServerProcess, http

EMBEDDED_IMAGE = "tfdeploy/serving-embedded:latest"


def _folder(tmp_path, n: int):
    from tfdeploy.demo.scenes import batch

    folder = tmp_path / "photos"
    folder.mkdir()
    images, _ = batch(np.random.default_rng(5), n, 64, 80)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    return folder


def test_predict_survives_a_replica_stopping_halfway(demo_base, tmp_path):
    a = ServerProcess("--model_name=deeplab", f"--model_base_path={demo_base}",
                      log_dir=tmp_path)
    b = ServerProcess("--model_name=deeplab", f"--model_base_path={demo_base}",
                      log_dir=tmp_path)
    try:
        a.wait_available(1)
        b.wait_available(1)
        n = 120
        folder, out = _folder(tmp_path, n), tmp_path / "masks"
        proc = subprocess.Popen(
            [sys.executable, "-m", "tfdeploy", "predict", str(folder), "-j", "2", "-o",
             str(out), "--server", f"{a.grpc_target},{b.grpc_target}", "--json"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(list(out.glob("*.png"))) < n // 2:
            time.sleep(0.05)
        assert len(list(out.glob("*.png"))) < n, "predict finished before the stop"
        assert b.stop() == 0  # halfway through: replica b goes away
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
        summary = json.loads(stdout)["summary"]
        assert summary["ok"] == n and summary["failed"] == 0
        counts = summary["endpoints"]
        assert counts[a.grpc_target] > counts[b.grpc_target] > 0
        assert "failed; using the others" in stderr
        assert len(list(out.glob("*.png"))) == n
    finally:
        a.stop()
        b.stop()


def test_bench_reports_per_endpoint_counts(demo_base, tmp_path):
    servers = [ServerProcess("--model_name=deeplab", f"--model_base_path={demo_base}",
                             log_dir=tmp_path) for _ in range(2)]
    try:
        for s in servers:
            s.wait_available(1)
        targets = ",".join(s.grpc_target for s in servers)
        report = json.loads(run_cli("bench", "--server", targets, "-c", "2", "-n", "10",
                                    "--json").stdout)
        (level,) = report["levels"]
        assert level["errors"] == 0
        assert level["endpoints"] == {s.grpc_target: 5 for s in servers}
    finally:
        for s in servers:
            s.stop()


def _compose_ready() -> str:
    if not shutil.which("docker-compose"):
        return "docker-compose is not installed"
    try:
        import docker

        client = docker.from_env(timeout=30)
        client.ping()
        client.images.get(EMBEDDED_IMAGE)
    except Exception as exc:
        return f"no docker engine or {EMBEDDED_IMAGE} ({str(exc).splitlines()[0][:100]})"
    return ""


def _port_block(count: int) -> int:
    """A start port with ``count`` consecutive free ports on 127.0.0.1."""
    rng = np.random.default_rng()
    for _ in range(100):
        start = int(rng.integers(20000, 40000))
        socks = []
        try:
            for p in range(start, start + count):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return start
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port block")


@pytest.mark.skipif(bool(_compose_ready()), reason=_compose_ready() or "ready")
def test_compose_replicas_serve_predictions(demo_base, tmp_path):
    start = _port_block(4)
    out = json.loads(run_cli("manifest", "-t", "compose", str(demo_base), "--replicas", "2",
                             "--image", EMBEDDED_IMAGE, "--grpc-port", start, "--rest-port",
                             start + 1, "-o", str(tmp_path / "deploy"), "--json").stdout)
    compose = ["docker-compose", "-f", out["files"][0], "-p", f"tfdeploytest{start}"]
    subprocess.run([*compose, "up", "-d"], check=True, capture_output=True, timeout=300)
    try:
        for rest in out["rest_endpoints"]:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    code, body = http("GET", f"http://{rest}/v1/models/deeplab", timeout=5)
                    if code == 200 and body["model_version_status"][0]["state"] == "AVAILABLE":
                        break
                except OSError:
                    pass
                time.sleep(0.5)
            else:
                logs = subprocess.run([*compose, "logs"], capture_output=True, text=True)
                raise AssertionError(f"{rest} never AVAILABLE:\n{logs.stdout[-2000:]}")
        folder, masks = _folder(tmp_path, 8), tmp_path / "masks"
        report = json.loads(run_cli("predict", str(folder), "-o", str(masks), "-j", "2",
                                    "--server", ",".join(out["grpc_endpoints"]),
                                    "--json").stdout)
        assert report["summary"]["ok"] == 8
        # 8 predictions and 1 metadata call, round robin over the two replicas
        assert sorted(report["summary"]["endpoints"].values()) == [4, 5]
        import docker

        for c in docker.from_env().containers.list(filters={"label": "tfdeploy.managed=compose"}):
            mounts = c.attrs["Mounts"]
            assert mounts and all(not m["RW"] for m in mounts)
    finally:
        subprocess.run([*compose, "down", "--remove-orphans"], capture_output=True,
                       timeout=300)
