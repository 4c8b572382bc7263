"""`tfdeploy stop --all` handles each server on its own: one it cannot reach is reported
and kept, the others are stopped, and a process it cannot prove it started is never
signalled."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import psutil
from conftest import run_cli
from servers import free_port

from tfdeploy.runtime import state
from tfdeploy.runtime.state import ServerRecord


def record(name: str, runtime: str, **fields) -> ServerRecord:
    return ServerRecord(name=name, runtime=runtime, model_name="m", base_path="/nowhere",
                        host="127.0.0.1", grpc_port=1, rest_port=2, started_at=time.time(),
                        **fields)


def test_stop_all_goes_past_failures_and_spares_strangers(small_checkpoint, tmp_path,
                                                          monkeypatch):
    base = tmp_path / "models"
    run_cli("export", small_checkpoint, "-o", base, "--no-verify", "--no-warmup")
    served = json.loads(run_cli("serve", base, "--runtime", "embedded", "--name", "live",
                                "--grpc-port", free_port(), "--rest-port", free_port(),
                                "--json").stdout)
    # a record of a docker server whose engine is away, and one naming a stranger's pid
    # with no start time (as records of old versions could)
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        state.save(record("boxed", "docker", container_id="0123456789ab"))
        state.save(record("stranger", "embedded", pid=stranger.pid, pid_start=None))
        proc = run_cli("stop", "--all", check=False,
                       env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
        assert proc.returncode == 1
        assert "stopped" in proc.stderr and "live" in proc.stderr
        assert "could not stop boxed" in proc.stderr and "Traceback" not in proc.stderr
        assert not psutil.pid_exists(served["pid"]) or \
            psutil.Process(served["pid"]).status() == psutil.STATUS_ZOMBIE
        assert stranger.poll() is None  # never signalled
        left = state.load_all()
        assert set(left) == {"boxed"}  # kept for another try; the others are gone
    finally:
        stranger.kill()
        stranger.wait()
        state.remove("boxed")
        run_cli("stop", "--all", check=False)
