"""Runtimes that run a model server as a local process: embedded (tfdeploy-model-server)
and native (tensorflow_model_server found on PATH).

Background servers get their own session (so a closing terminal does not take them down),
a pid and a log file under the state directory.  Stopping sends SIGTERM (the servers
drain in-flight requests) and SIGKILL only after the timeout.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tfdeploy.errors import UserError
from tfdeploy.runtime.base import ServeSpec, check_ports_free
from tfdeploy.runtime.state import ServerRecord, state_dir


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state is [0], start time [19])."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_start(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[19]) if fields else None


class ProcessRuntime:
    name = "process"

    def command(self, spec: ServeSpec) -> list[str]:
        raise NotImplementedError

    def _base_flags(self, spec: ServeSpec) -> list[str]:
        flags = [f"--port={spec.grpc_port}", f"--rest_api_port={spec.rest_port}"]
        if spec.model_config_file is None:
            flags += [f"--model_name={spec.model_name}", f"--model_base_path={spec.base_path}"]
        return flags + spec.server_flags()

    def available(self, spec: ServeSpec) -> tuple[bool, str]:
        if spec.gpu:
            return False, f"{self.name} runtime does not take --gpu"
        return True, ""

    def start(self, spec: ServeSpec, progress: Callable[[str], None] | None = None,
              foreground: bool = False) -> ServerRecord:
        check_ports_free(spec.host, spec.grpc_port, spec.rest_port)
        cmd = self.command(spec)
        record = ServerRecord(name=spec.name, runtime=self.name, model_name=spec.model_name,
                              base_path=str(spec.base_path or ""), host=spec.host,
                              grpc_port=spec.grpc_port, rest_port=spec.rest_port,
                              started_at=time.time(), command=cmd)
        if foreground:
            record.pid = os.getpid()
            return record
        logs = state_dir() / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_file = logs / f"{spec.name}.log"
        with open(log_file, "wb") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        record.pid, record.log_file = proc.pid, str(log_file)
        record.pid_start = process_start(proc.pid)
        return record

    def run_foreground(self, spec: ServeSpec) -> int:
        """Run attached to the terminal until Ctrl-C / SIGTERM; returns the exit code."""
        check_ports_free(spec.host, spec.grpc_port, spec.rest_port)
        proc = subprocess.Popen(self.command(spec))
        forward = lambda signum, _frame: proc.send_signal(signum)  # noqa: E731
        old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            return proc.wait()
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)

    def alive(self, record: ServerRecord) -> bool:
        """Running, not a zombie, and still the process we started (pids get reused)."""
        if not record.pid:
            return False
        fields = _stat(record.pid)
        if fields is None or fields[0] in ("Z", "X"):
            return False
        return record.pid_start is None or int(fields[19]) == record.pid_start

    def logs(self, record: ServerRecord, follow: bool = False, tail: int = 100
             ) -> Iterator[str]:
        if not record.log_file or not Path(record.log_file).is_file():
            return
        with open(record.log_file, errors="replace") as fh:
            lines = fh.readlines()
            yield from (line.rstrip("\n") for line in lines[-tail:] if tail)
            while follow:
                line = fh.readline()
                if line:
                    yield line.rstrip("\n")
                elif not self.alive(record):
                    return
                else:
                    time.sleep(0.2)

    def stop(self, record: ServerRecord, timeout: float = 30) -> None:
        if not self.alive(record):
            return
        try:
            os.killpg(record.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.alive(record):
            time.sleep(0.1)
        if self.alive(record):
            os.killpg(record.pid, signal.SIGKILL)
        try:  # reap it if it is our child (foreground tests)
            os.waitpid(record.pid, os.WNOHANG)
        except ChildProcessError:
            pass


class EmbeddedRuntime(ProcessRuntime):
    """tfdeploy-model-server, bound to ``--host`` (127.0.0.1 by default)."""

    name = "embedded"

    def command(self, spec: ServeSpec) -> list[str]:
        return [sys.executable, "-m", "tfdeploy.serving", *self._base_flags(spec),
                f"--grpc_host={spec.host}", f"--rest_api_host={spec.host}"]


class NativeRuntime(ProcessRuntime):
    """The official tensorflow_model_server binary, found on PATH."""

    name = "native"

    def binary(self) -> str | None:
        return shutil.which("tensorflow_model_server")

    def available(self, spec: ServeSpec) -> tuple[bool, str]:
        if not self.binary():
            return False, "tensorflow_model_server is not on PATH"
        return super().available(spec)

    def command(self, spec: ServeSpec) -> list[str]:
        binary = self.binary()
        if not binary:
            raise UserError("tensorflow_model_server is not on PATH (install it, or use "
                            "the docker or embedded runtime)", param="runtime")
        # The official binary has no bind-address flags: it listens on all interfaces.
        return [binary, *self._base_flags(spec)]
