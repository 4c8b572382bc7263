"""Runtimes that run a model server as a local process: embedded (tfdeploy-model-server)
and native (tensorflow_model_server found on PATH).

Background servers get their own session (so a closing terminal does not take them down),
a pid and a log file under the state directory.  Stopping sends SIGTERM (the servers
drain in-flight requests) and SIGKILL only after the timeout.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

from tfdeploy.errors import UserError
from tfdeploy.runtime.base import ServeSpec, check_ports_free, free_port
from tfdeploy.runtime.state import ServerRecord, ensure_state_dir, private_file
from tfdeploy.tfs.flags import flag_name, format_flag


def process_start(pid: int) -> float | None:
    """The process's creation time (seconds since the epoch), or None if it is gone.

    psutil reads it the same way on Linux and macOS, so the embedded and native runtimes
    work on both; together with the pid it identifies our process even after pid reuse."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def same_start(recorded: float | None, actual: float) -> bool:
    """Whether ``actual`` (epoch seconds) is the start time we recorded, i.e. whether the
    process at the recorded pid is provably the one we started.  No recorded start time:
    not provable, so never ours (we must not signal a stranger that reuses the pid).
    Records written before psutil hold clock ticks since boot (< 1e9, never a plausible
    epoch time): converted with the boot time, as the kernel reports both."""
    if recorded is None:
        return False
    if recorded < 1e9:
        recorded = psutil.boot_time() + recorded / _clock_ticks()
        return abs(recorded - actual) < 1.0
    return abs(recorded - actual) < 0.01


def _clock_ticks() -> int:
    try:
        return os.sysconf("SC_CLK_TCK")
    except (AttributeError, ValueError, OSError):  # not POSIX: ticks records never exist
        return 100


class ProcessRuntime:
    name = "process"

    def command(self, spec: ServeSpec) -> list[str]:
        raise NotImplementedError

    def _base_flags(self, spec: ServeSpec) -> list[str]:
        flags = [format_flag("port", spec.grpc_port),
                 format_flag("rest_api_port", spec.rest_port)]
        if spec.model_config_file is None:
            flags += [format_flag("model_name", spec.model_name),
                      format_flag("model_base_path", spec.base_path)]
        return flags + spec.server_flags()

    def rest_tls(self, spec: ServeSpec) -> bool:
        """Whether REST speaks HTTPS under ``--ssl_config_file`` (gRPC always does)."""
        return False

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
                              started_at=time.time(), command=cmd,
                              models=spec.model_names())
        if foreground:
            record.pid = os.getpid()
            return record
        log_file = ensure_state_dir("logs") / f"{spec.name}.log"
        with os.fdopen(private_file(log_file), "wb") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
                                         **spec.env})
        record.pid, record.log_file = proc.pid, str(log_file)
        record.pid_start = process_start(proc.pid)
        return record

    def run_foreground(self, spec: ServeSpec) -> int:
        """Run attached to the terminal until Ctrl-C / SIGTERM; returns the exit code."""
        check_ports_free(spec.host, spec.grpc_port, spec.rest_port)
        proc = subprocess.Popen(self.command(spec), env={**os.environ, **spec.env})
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
        try:
            proc = psutil.Process(record.pid)
            if proc.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
                return False
            return same_start(record.pid_start, proc.create_time())
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return False
        except psutil.AccessDenied:  # another user's process reusing the pid
            return False

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

    def rest_tls(self, spec: ServeSpec) -> bool:
        return True  # tfdeploy-model-server: --ssl_config_file covers REST too

    def command(self, spec: ServeSpec) -> list[str]:
        return [sys.executable, "-m", "tfdeploy.serving", *self._base_flags(spec),
                format_flag("grpc_host", spec.host), format_flag("rest_api_host", spec.host),
                *self._local_reloads(spec)]

    def _local_reloads(self, spec: ServeSpec) -> list[str]:
        """Reloads (HandleReloadConfigRequest) local-only unless the flags after ``--``
        say otherwise: on a UNIX socket in the 0700 state directory (this user only), or,
        where that path is too long for a socket, on a free port on 127.0.0.1."""
        given = {flag_name(f) for f in spec.extra_flags}
        if "model_service_port" in given:
            return []
        if "grpc_socket_path" in given:
            return [format_flag("model_service_port", -1)]
        sock = ensure_state_dir("sockets") / f"{spec.name}.sock"
        if len(str(sock)) < 100:
            with contextlib.suppress(FileNotFoundError):
                sock.unlink()  # a server of that name that died left it
            return [format_flag("grpc_socket_path", sock),
                    format_flag("model_service_port", -1)]
        return [format_flag("model_service_port", free_port("127.0.0.1"))]


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
        # The official binary has no bind-address flags: it listens on all interfaces
        # (start() says so and records it).
        return [binary, *self._base_flags(spec)]

    def start(self, spec: ServeSpec, progress: Callable[[str], None] | None = None,
              foreground: bool = False) -> ServerRecord:
        if spec.host not in ("0.0.0.0", "::"):
            logging.getLogger("tfdeploy.runtime").warning(
                "tensorflow_model_server has no bind-address flag and listens on all "
                "interfaces, whatever --host (%s) says; use the docker or embedded runtime "
                "to keep it to one address", spec.host)
        if spec.ssl_config_file:
            logging.getLogger("tfdeploy.runtime").warning(
                "tensorflow_model_server serves gRPC over TLS with --ssl_config_file but "
                "REST as plain HTTP; use the embedded runtime (or docker with %s) for "
                "HTTPS on REST", "tfdeploy/serving-embedded")
        check_ports_free("0.0.0.0", spec.grpc_port, spec.rest_port)
        record = super().start(spec, progress, foreground)
        record.host = "0.0.0.0"  # what it really listens on (status shows the truth)
        return record
