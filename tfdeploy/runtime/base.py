"""What every runtime shares: the serve spec, the interface, port checks and readiness.

Readiness means what TF Serving itself reports: the model's REST status endpoint lists a
version as AVAILABLE.  A server that does not get there in time is stopped, and the error
carries the last lines of its log so the user sees why.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tfdeploy.errors import UserError
from tfdeploy.runtime.state import ServerRecord


@dataclass
class ServeSpec:
    """Everything ``tfdeploy serve`` was asked for; runtimes translate it to their world."""

    base_path: Path | None
    model_name: str = "deeplab"
    name: str = ""
    host: str = "127.0.0.1"
    grpc_port: int = 8500
    rest_port: int = 8501
    model_config_file: Path | None = None
    enable_batching: bool = False
    batching_parameters_file: Path | None = None
    monitoring_config_file: Path | None = None
    gpu: bool = False
    gpus: list[str] = field(default_factory=list)
    image: str | None = None
    restart: str | None = None
    poll_seconds: float = 1.0

    def __post_init__(self) -> None:
        self.name = self.name or self.model_name
        if self.base_path is None and self.model_config_file is None:
            raise UserError("give a model base path (e.g. models/deeplab) or a model config file")
        if self.base_path is not None:
            self.base_path = Path(self.base_path).absolute()
            if not self.base_path.is_dir():
                raise UserError(f"{self.base_path}: no such model base path "
                                "(run `tfdeploy export` first)")
        for attr in ("model_config_file", "batching_parameters_file", "monitoring_config_file"):
            value = getattr(self, attr)
            if value is not None:
                value = Path(value).absolute()
                if not value.is_file():
                    raise UserError(f"no such file {value}", param=attr)
                setattr(self, attr, value)
        if self.grpc_port == self.rest_port:
            raise UserError("must differ from the REST port", param="grpc_port")

    def server_flags(self, *, config_path: str | None = None, batching_path: str | None = None,
                     monitoring_path: str | None = None) -> list[str]:
        """tensorflow_model_server flags beyond model name/base path (paths as seen by the
        server, which differ inside a container)."""
        flags = [f"--file_system_poll_wait_seconds={self.poll_seconds:g}"]
        if self.model_config_file:
            flags.append(f"--model_config_file={config_path or self.model_config_file}")
        if self.enable_batching:
            flags.append("--enable_batching=true")
            if self.batching_parameters_file:
                flags.append("--batching_parameters_file="
                             f"{batching_path or self.batching_parameters_file}")
        if self.monitoring_config_file:
            path = monitoring_path or self.monitoring_config_file
            flags.append(f"--monitoring_config_file={path}")
        return flags


class Runtime(Protocol):
    name: str

    def available(self, spec: ServeSpec) -> tuple[bool, str]:
        """Whether this runtime can serve ``spec`` here, and why (for --runtime auto)."""

    def start(self, spec: ServeSpec, progress: Callable[[str], None] | None = None
              ) -> ServerRecord: ...

    def alive(self, record: ServerRecord) -> bool: ...

    def logs(self, record: ServerRecord, follow: bool = False, tail: int = 100
             ) -> Iterator[str]: ...

    def stop(self, record: ServerRecord, timeout: float = 30) -> None: ...


def check_ports_free(host: str, *ports: int) -> None:
    for port in ports:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            # SO_REUSEADDR: connections in TIME_WAIT do not count, a listener still does.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                raise UserError(f"port {port} on {host} is already in use "
                                f"(pick another with --grpc-port/--rest-port, or "
                                f"`tfdeploy stop`)") from None


def model_status(record: ServerRecord, model: str | None = None,
                 timeout: float = 2.0) -> dict[int, str] | None:
    """{version: state} from the REST status endpoint; None if the server does not answer."""
    url = f"http://{record.rest_endpoint}/v1/models/{model or record.model_name}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError:
        return {}
    except (OSError, ValueError):
        return None
    return {int(v["version"]): v["state"] for v in body.get("model_version_status", [])}


def wait_ready(runtime: Runtime, record: ServerRecord, timeout: float = 120) -> dict[int, str]:
    """Block until a version is AVAILABLE; on failure stop the server, raise with its log."""
    deadline = time.monotonic() + timeout
    status: dict[int, str] | None = None
    while time.monotonic() < deadline:
        status = model_status(record)
        if status and "AVAILABLE" in status.values():
            return status
        if status and set(status.values()) == {"END"}:
            break  # every version it found failed to load: waiting longer will not help
        if not runtime.alive(record):
            break
        time.sleep(0.25)
    tail = "\n".join(list(runtime.logs(record, tail=15))[-15:])
    if status and set(status.values()) == {"END"}:
        reason = "could not load any version of its model"
    elif not runtime.alive(record):
        reason = "exited"
    else:
        reason = f"not ready after {timeout:.0f}s"
    runtime.stop(record)
    raise UserError(f"server {record.name} {reason} (model status: {status}); last log lines:"
                    f"\n{tail}")
