"""The per-user record of servers ``tfdeploy serve`` started, so ``status``, ``logs``,
``stop`` and ``predict`` find them without flags.

One JSON file (``$TFDEPLOY_STATE_DIR`` or ``~/.local/state/tfdeploy``), rewritten
atomically under an advisory lock so concurrent commands never corrupt it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path


def state_dir() -> Path:
    env = os.environ.get("TFDEPLOY_STATE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_STATE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "state") / "tfdeploy"


@dataclass
class ServerRecord:
    name: str
    runtime: str  # docker | native | embedded
    model_name: str
    base_path: str
    host: str
    grpc_port: int
    rest_port: int
    pid: int | None = None
    pid_start: float | None = None  # process creation time (epoch s): a reused pid is not ours
    container_id: str | None = None
    image: str | None = None
    log_file: str | None = None
    started_at: float = 0.0
    command: list[str] = field(default_factory=list)
    #: every model the server serves (several with a model config file)
    models: list[str] = field(default_factory=list)
    #: the model config file on this machine, which the server re-reads: what it serves
    #: follows the file, and ``status`` / ``predict`` follow it too
    model_config_file: str | None = None

    @property
    def grpc_endpoint(self) -> str:
        return f"{_connect_host(self.host)}:{self.grpc_port}"

    @property
    def rest_endpoint(self) -> str:
        return f"{_connect_host(self.host)}:{self.rest_port}"

    def to_json(self) -> dict:
        return asdict(self)


def _connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


@contextlib.contextmanager
def _locked():
    d = state_dir()
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "servers.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield d / "servers.json"
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read(path: Path) -> dict[str, ServerRecord]:
    try:
        raw = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    known = set(ServerRecord.__dataclass_fields__)
    return {k: ServerRecord(**{f: v for f, v in rec.items() if f in known})
            for k, rec in raw.get("servers", {}).items()}


def _write(path: Path, records: dict[str, ServerRecord]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".servers.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump({"servers": {k: r.to_json() for k, r in records.items()}}, fh, indent=2)
    os.replace(tmp, path)


def load_all() -> dict[str, ServerRecord]:
    with _locked() as path:
        return _read(path)


def save(record: ServerRecord) -> None:
    with _locked() as path:
        records = _read(path)
        records[record.name] = record
        _write(path, records)


def remove(name: str) -> None:
    with _locked() as path:
        records = _read(path)
        if records.pop(name, None) is not None:
            _write(path, records)
