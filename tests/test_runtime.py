"""`tfdeploy serve/status/logs/stop` with the embedded runtime (works on any machine)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time

import psutil
import pytest
from conftest import ROOT, run_cli
from PIL import Image
from servers import free_port

from tfdeploy.runtime import state

EXAMPLE = sorted((ROOT / "examples").glob("*.jpg"))[0]


def _pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def ports():
    return free_port(), free_port()


def test_embedded_lifecycle(demo_base, tmp_path, ports):
    grpc_port, rest_port = ports
    base = tmp_path / "deeplab"
    shutil.copytree(demo_base / "1", base / "1")
    out = json.loads(run_cli("serve", str(base), "--runtime", "embedded", "--grpc-port",
                             grpc_port, "--rest-port", rest_port, "--poll-seconds", "0.5",
                             "--json").stdout)
    pid = out["pid"]
    try:
        assert out["runtime"] == "embedded" and out["versions"] == {"1": "AVAILABLE"}
        assert out["grpc"] == f"127.0.0.1:{grpc_port}"
        listed = json.loads(run_cli("status", "--json").stdout)
        assert [s["name"] for s in listed] == ["deeplab"] and listed[0]["running"]
        text = run_cli("status").stdout
        assert "deeplab: running, embedded" in text and "v1 AVAILABLE" in text
        # predict finds the server through the state file, no --server needed
        masks = tmp_path / "masks"
        run_cli("predict", str(EXAMPLE), "-o", str(masks))
        assert Image.open(masks / f"{EXAMPLE.stem}.png").mode == "P"
        # a new export is picked up by the running server
        run_cli("export", "-o", str(base), "--no-verify")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            versions = json.loads(run_cli("status", "--json").stdout)[0]["versions"]
            if versions.get("2") == "AVAILABLE":
                break
            time.sleep(0.5)
        assert versions == {"2": "AVAILABLE", "1": "END"}
        assert "AVAILABLE" in run_cli("logs", "--tail", "50").stdout
        # the same name twice is refused while it runs
        again = run_cli("serve", str(base), "--runtime", "embedded", "--grpc-port",
                        free_port(), "--rest-port", free_port(), check=False)
        assert again.returncode == 2 and "already running" in again.stderr
    finally:
        stopped = run_cli("stop", "--all")
    assert "stopped deeplab" in stopped.stdout
    assert not _pid_alive(pid)
    assert state.load_all() == {}
    assert "no servers" in run_cli("status").stdout


def test_port_in_use_and_bad_paths(demo_base, tmp_path, ports):
    grpc_port, rest_port = ports
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", grpc_port))
        busy.listen()
        proc = run_cli("serve", str(demo_base), "--runtime", "embedded", "--grpc-port",
                       grpc_port, "--rest-port", rest_port, check=False)
    assert proc.returncode == 2 and f"port {grpc_port}" in proc.stderr
    proc = run_cli("serve", str(tmp_path / "nothing"), "--runtime", "embedded", check=False)
    assert proc.returncode == 2 and "tfdeploy export" in proc.stderr
    proc = run_cli("serve", str(demo_base), "--runtime", "embedded", "--gpu", check=False)
    assert proc.returncode == 2 and "--gpu" in proc.stderr
    proc = run_cli("stop", "ghost", check=False)
    assert proc.returncode == 2 and "no server named 'ghost'" in proc.stderr
    assert state.load_all() == {}


def test_model_that_never_loads_times_out_with_log(tmp_path, ports):
    grpc_port, rest_port = ports
    base = tmp_path / "broken"
    (base / "1" / "variables").mkdir(parents=True)
    (base / "1" / "saved_model.pb").write_bytes(b"this is not a SavedModel")
    (base / "1" / "variables" / "variables.index").write_bytes(b"")
    proc = run_cli("serve", str(base), "--runtime", "embedded", "--grpc-port", grpc_port,
                   "--rest-port", rest_port, "--timeout", "40", check=False)
    assert proc.returncode == 2
    assert "could not load any version" in proc.stderr
    assert "last log lines" in proc.stderr and "failed to load" in proc.stderr
    assert state.load_all() == {}
    with socket.socket() as s:  # the failed server is gone: its port is free again
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", grpc_port))


def test_native_runtime_runs_tensorflow_model_server_from_path(demo_base, tmp_path, ports):
    """The native runtime with a `tensorflow_model_server` on PATH.  The official binary
    cannot be installed here, so PATH holds our flag-compatible server under that name."""
    import sys

    grpc_port, rest_port = ports
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "tensorflow_model_server"
    shim.write_text(f"#!/bin/bash\nexec {sys.executable} -m tfdeploy.serving \"$@\"\n")
    shim.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    out = json.loads(run_cli("serve", str(demo_base), "--runtime", "native", "--grpc-port",
                             grpc_port, "--rest-port", rest_port, "--json", env=env).stdout)
    try:
        assert out["runtime"] == "native" and out["versions"] == {"1": "AVAILABLE"}
        assert out["command"][0] == str(shim)
        assert f"--model_base_path={demo_base}" in out["command"]
        assert not any(c.startswith("--grpc_host") for c in out["command"])  # not a real flag
        listed = json.loads(run_cli("status", "--json", env=env).stdout)
        assert listed[0]["runtime"] == "native" and listed[0]["running"]
    finally:
        run_cli("stop", "--all", env=env)
    assert not _pid_alive(out["pid"])


def test_foreground_serve_stops_on_ctrl_c(demo_base, ports):
    import signal
    import subprocess
    import sys

    from servers import http

    grpc_port, rest_port = ports
    proc = subprocess.Popen([sys.executable, "-m", "tfdeploy", "serve", str(demo_base),
                             "--runtime", "embedded", "--foreground", "--grpc-port",
                             str(grpc_port), "--rest-port", str(rest_port)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                code, body = http("GET", f"http://127.0.0.1:{rest_port}/v1/models/deeplab",
                                  timeout=2)
                if code == 200 and body["model_version_status"][0]["state"] == "AVAILABLE":
                    break
            except OSError:
                time.sleep(0.2)
        else:
            raise AssertionError("foreground server never became AVAILABLE")
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    assert "draining" in output and "stopped" in output
    assert state.load_all() == {}  # foreground servers are not recorded
