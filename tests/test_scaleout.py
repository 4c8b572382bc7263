"""Several servers: the client spreads requests round robin and survives one going away;
the generated compose file runs for real with the locally built serving image."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
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


def _compose_commands() -> dict[str, list[str] | None]:
    """The compose commands installed here: v2 (``docker compose``) and v1
    (``docker-compose``); the generated file must work with both."""
    v2 = None
    if shutil.which("docker"):
        try:
            if subprocess.run(["docker", "compose", "version"], capture_output=True,
                              timeout=30).returncode == 0:
                v2 = ["docker", "compose"]
        except (OSError, subprocess.TimeoutExpired):
            pass
    return {"v2": v2, "v1": ["docker-compose"] if shutil.which("docker-compose") else None}


COMPOSE = _compose_commands()


def _compose_skip(version: str) -> str:
    if not COMPOSE[version]:
        return {"v2": "the docker compose v2 plugin is not installed",
                "v1": "docker-compose (v1) is not installed"}[version]
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


def _wait_healthy(project: str, count: int, timeout: float = 240) -> list:
    """The project's containers once all ``count`` report healthy (their compose
    healthcheck on the REST model status), or AssertionError with their states."""
    import docker

    client = docker.from_env()
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        containers = client.containers.list(
            all=True, filters={"label": f"com.docker.compose.project={project}"})
        states = {c.name: c.attrs["State"].get("Health", {}).get("Status", "none")
                  for c in containers}
        if len(states) == count and set(states.values()) == {"healthy"}:
            return containers
        assert "unhealthy" not in states.values(), states
        time.sleep(1)
    raise AssertionError(f"not healthy after {timeout:.0f} s: {states}")


@contextlib.contextmanager
def _compose_up(version: str, demo_base, tmp_path, project: str, replicas: int,
                *options: str):
    """``manifest -t compose`` of the demo for ``replicas`` replicas of our image on a free
    port block, ``up -d`` under ``project``; yields (manifest --json output, the compose
    command, the healthy containers) and always takes the project down.  A replica that
    does not turn healthy fails with the compose logs."""
    start = _port_block(2 * replicas)
    out = json.loads(run_cli("manifest", "-t", "compose", str(demo_base), "--replicas",
                             replicas, *options, "--image", EMBEDDED_IMAGE, "--grpc-port",
                             start, "--rest-port", start + 1, "-o", str(tmp_path / "deploy"),
                             "--json").stdout)
    compose = [*COMPOSE[version], "-f", out["files"][0], "-p", f"{project}{start}"]
    proc = subprocess.run([*compose, "up", "-d"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    try:
        try:
            containers = _wait_healthy(f"{project}{start}", replicas)
        except AssertionError:
            logs = subprocess.run([*compose, "logs"], capture_output=True, text=True)
            raise AssertionError(logs.stdout[-3000:]) from None
        yield out, compose, containers
    finally:
        subprocess.run([*compose, "down", "--remove-orphans"], capture_output=True,
                       timeout=300)


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_compose_replicas_turn_healthy_and_survive_one_stopping(demo_base, tmp_path,
                                                                version):
    reason = _compose_skip(version)
    if reason:
        pytest.skip(reason)
    with _compose_up(version, demo_base, tmp_path, f"tfdeploytest{version}", 2) as (
            out, compose, containers):
        for c in containers:
            assert c.attrs["Mounts"] and all(not m["RW"] for m in c.attrs["Mounts"])
            assert c.attrs["HostConfig"]["ReadonlyRootfs"] is True
        for rest in out["rest_endpoints"]:
            code, body = http("GET", f"http://{rest}/v1/models/deeplab", timeout=5)
            assert code == 200 and body["model_version_status"][0]["state"] == "AVAILABLE"
        n = 120
        folder, masks = _folder(tmp_path, n), tmp_path / "masks"
        predict = subprocess.Popen(
            [sys.executable, "-m", "tfdeploy", "predict", str(folder), "-j", "2", "-o",
             str(masks), "--server", ",".join(out["grpc_endpoints"]), "--json"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and len(list(masks.glob("*.png"))) < n // 3:
            time.sleep(0.05)
        # Hold the client while the replica stops: otherwise a fast machine finishes the
        # remaining images during `compose stop`'s own start-up and nothing fails over.
        os.kill(predict.pid, signal.SIGSTOP)
        try:
            assert predict.poll() is None and len(list(masks.glob("*.png"))) < n, \
                "predict finished before the stop"
            stop = subprocess.run([*compose, "stop", "deeplab-serving-2"], capture_output=True,
                                  text=True, timeout=120)
        finally:
            os.kill(predict.pid, signal.SIGCONT)
        assert stop.returncode == 0, stop.stderr
        stdout, stderr = predict.communicate(timeout=300)
        assert predict.returncode == 0, stderr
        summary = json.loads(stdout)["summary"]
        assert summary["ok"] == n and summary["failed"] == 0, summary
        first, second = out["grpc_endpoints"]
        counts = summary["endpoints"]
        assert counts[first] > counts[second] > 0, counts
        assert len(list(masks.glob("*.png"))) == n


def test_compose_protocol_v2_turns_healthy_and_answers_v2(demo_base, tmp_path):
    """manifest -t compose --protocol v2 with our image, run for real: the replica turns
    healthy by its /v2/health/ready healthcheck and answers predict --protocol v2 over
    gRPC and REST."""
    version = "v2" if COMPOSE["v2"] else "v1"
    reason = _compose_skip(version)
    if reason:
        pytest.skip(reason)
    with _compose_up(version, demo_base, tmp_path, "tfdeploytestv2p", 1, "--protocol",
                     "v2") as (out, _, (container,)):
        assert "/v2/health/ready" in container.attrs["Config"]["Healthcheck"]["Test"][-1]
        example = sorted((ROOT / "examples").glob("*.jpg"))[0]
        for transport, endpoints in (("grpc", out["grpc_endpoints"]),
                                     ("rest", out["rest_endpoints"])):
            proc = run_cli("predict", example, "--protocol", "v2", "--transport", transport,
                           "--server", endpoints[0], "-o", tmp_path / transport, "--json")
            assert json.loads(proc.stdout)["summary"]["ok"] == 1
