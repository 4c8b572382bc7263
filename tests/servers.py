"""Start real model servers on 127.0.0.1 for tests, and talk to them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port free now and never handed out before in this test run: the kernel may give
    the same ephemeral port to two binds in a row once the first socket is closed (CI saw
    a server asked to listen for gRPC and REST on one port)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def http(method: str, url: str, body: bytes | dict | None = None,
         timeout: float = 60) -> tuple[int, dict | str]:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw, status = resp.read(), resp.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode("utf-8", "replace")


def memory(pid: int, field: str = "VmHWM") -> int:
    """A process's memory figure from /proc/PID/status (VmHWM: peak resident set, VmRSS:
    current), bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def reset_peak(pid: int) -> int:
    """VmHWM back to the current RSS (Linux: 5 > clear_refs), so that a peak read later
    is this phase's own, not one left by loading or an earlier phase; returns that RSS.
    Skips the test where the kernel refuses."""
    import pytest

    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pytest.skip("cannot reset the peak RSS of the server here")
    return memory(pid, "VmRSS")


class ServerProcess:
    """``tfdeploy-model-server`` in a subprocess, logs in a file."""

    def __init__(self, *flags: str, log_dir: Path, grpc_port: int | None = None,
                 rest_port: int | None = None, env: dict[str, str] | None = None):
        """Ports are free ones unless given (a restarted server takes its old ports);
        ``env``: variables set for the server on top of this process's."""
        self.grpc_port, self.rest_port = grpc_port or free_port(), rest_port or free_port()
        self.log_path = log_dir / f"server-{self.grpc_port}-{time.time_ns()}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tfdeploy.serving", f"--port={self.grpc_port}",
             f"--rest_api_port={self.rest_port}", "--grpc_host=127.0.0.1",
             "--rest_api_host=127.0.0.1", *flags],
            cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})})

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def status(self, model: str = "deeplab") -> dict[int, str]:
        code, body = http("GET", f"{self.rest}/v1/models/{model}", timeout=5)
        if code != 200:
            return {}
        return {int(v["version"]): v["state"] for v in body["model_version_status"]}

    def wait_for(self, predicate, timeout: float = 120, model: str = "deeplab") -> dict:
        deadline = time.monotonic() + timeout
        state: dict = {}
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.log()}")
            try:
                state = self.status(model)
                if predicate(state):
                    return state
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"timed out; last status {state}\n{self.log()[-3000:]}")

    def wait_available(self, version: int | None = None, model: str = "deeplab") -> dict:
        return self.wait_for(
            lambda s: (s.get(version) == "AVAILABLE") if version else "AVAILABLE" in s.values(),
            model=model)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode
