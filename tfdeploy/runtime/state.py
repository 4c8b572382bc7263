"""The per-user record of servers ``tfdeploy serve`` started, so ``status``, ``logs``,
``stop`` and ``predict`` find them without flags.

One JSON file (``$TFDEPLOY_STATE_DIR`` or ``~/.local/state/tfdeploy``), rewritten
atomically under an advisory lock so concurrent commands never corrupt it.  Besides the
servers, it keeps the last records of servers ``tfdeploy stop`` stopped (``retire``), only
so their request logs can still be found by name.

The directory is this user's alone (0700, files 0600): a record says which process to
signal, which container to remove and which log to open, so a record someone else could
write would let them steer those.  Records are checked before use: the file must belong
to the user, a record's name must be a valid server name and its log file must lie in
the state directory's ``logs/``; a record that fails is ignored with a warning.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import stat
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tfdeploy.errors import UserError

log = logging.getLogger("tfdeploy.state")
RUNTIMES = ("docker", "native", "embedded")
#: the state file's sections: servers started and not stopped (running or dead), and the
#: last records of servers ``tfdeploy stop`` stopped (see ``retire``)
SERVERS, STOPPED = "servers", "stopped"
SECTIONS = (SERVERS, STOPPED)
#: how many stopped servers' records are kept (the newest; one per name)
KEEP_STOPPED = 32


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
    #: TLS (``serve --ssl-config-file``): which front ends speak it (the official
    #: binary's REST never does), the PEM file clients trust, a client certificate and
    #: key for servers that verify clients, and the name the certificate carries when
    #: it is not the address's host; client commands use them without flags
    grpc_tls: bool = False
    rest_tls: bool = False
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_server_name: str | None = None

    @property
    def grpc_endpoint(self) -> str:
        return f"{_connect_host(self.host)}:{self.grpc_port}"

    @property
    def rest_endpoint(self) -> str:
        return f"{_connect_host(self.host)}:{self.rest_port}"

    @property
    def rest_url(self) -> str:
        """``http(s)://host:port`` of the REST API, as the server speaks it."""
        return f"{'https' if self.rest_tls else 'http'}://{self.rest_endpoint}"

    def to_json(self) -> dict:
        return asdict(self)


def _connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def ensure_state_dir(sub: str | None = None) -> Path:
    """The state directory (or its ``sub`` folder), created 0700 and checked to be the
    user's own; a directory of ours that others can read is tightened to 0700."""
    d = state_dir()
    for path in (d, d / sub) if sub else (d,):
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            info = path.stat()
        if info.st_uid != os.geteuid():
            raise UserError(f"{path} belongs to another user (uid {info.st_uid}); set "
                            "TFDEPLOY_STATE_DIR to a directory of your own")
        if stat.S_IMODE(info.st_mode) & 0o077:
            os.chmod(path, 0o700)
    return d / sub if sub else d


def private_file(path: Path, truncate: bool = True) -> int:
    """Open ``path`` for writing as a 0600 file of ours (not through a symlink planted
    there); returns the descriptor."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_TRUNC if truncate else 0)
    fd = os.open(path, flags, 0o600)
    os.fchmod(fd, 0o600)
    return fd


def check_name(name: str, param: str = "name") -> str:
    """Server names become file names (``logs/NAME.log``) and container names."""
    from tfdeploy.tfs.names import model_name_problem

    if model_name_problem(name):
        raise UserError(f"{name!r} is not a valid server name (letters, digits, '.', '_' and "
                        "'-', starting with a letter or digit)", param=param)
    return name


def record_problem(record: ServerRecord, key: str) -> str | None:
    """Why ``record`` (stored under ``key``) cannot be trusted, or None."""
    from tfdeploy.tfs.names import model_name_problem

    if key != record.name or model_name_problem(record.name):
        return f"bad name {key!r}"
    if record.runtime not in RUNTIMES:
        return f"unknown runtime {record.runtime!r}"
    if record.log_file is not None:
        logs = (state_dir() / "logs").resolve()
        if Path(record.log_file).resolve() != logs / f"{record.name}.log":
            return f"log file {record.log_file!r} outside {logs}"
    if record.container_id is not None and not (isinstance(record.container_id, str)
                                                and record.container_id.isalnum()):
        return f"bad container id {record.container_id!r}"
    for attr in ("tls_ca", "tls_cert", "tls_key", "tls_server_name"):
        if not isinstance(getattr(record, attr), (str, type(None))):
            return f"bad {attr} {getattr(record, attr)!r}"
    for port in (record.grpc_port, record.rest_port):
        if not isinstance(port, int) or not 0 < port < 65536:
            return f"bad port {port!r}"
    return None


@contextlib.contextmanager
def _locked():
    d = ensure_state_dir()
    with os.fdopen(private_file(d / "servers.lock", truncate=False), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield d / "servers.json"
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read(path: Path) -> dict[str, ServerRecord]:
    """The running (or dead, not yet stopped) servers' records."""
    return _read_sections(path)[SERVERS]


def _read_sections(path: Path) -> dict[str, dict[str, ServerRecord]]:
    """Every section of the state file: ``servers`` and ``stopped``, each name -> record."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return {section: {} for section in SECTIONS}
    except OSError as exc:
        raise UserError(f"{path}: cannot read the server records ({exc.strerror})") from None
    with os.fdopen(fd) as fh:
        info = os.fstat(fh.fileno())
        if info.st_uid != os.geteuid():
            raise UserError(f"{path} belongs to another user (uid {info.st_uid}); its "
                            "records are not used (set TFDEPLOY_STATE_DIR to a directory "
                            "of your own)")
        try:
            raw = json.loads(fh.read())
        except ValueError:
            raw = {}
    known = set(ServerRecord.__dataclass_fields__)
    sections: dict[str, dict[str, ServerRecord]] = {}
    for section in SECTIONS:
        records = sections[section] = {}
        entries = raw.get(section) if isinstance(raw, dict) else None
        for key, rec in (entries if isinstance(entries, dict) else {}).items():
            try:
                record = ServerRecord(**{f: v for f, v in rec.items() if f in known})
            except (TypeError, AttributeError):
                log.warning("server record %r ignored: incomplete", key)
                continue
            problem = record_problem(record, key)
            if problem:
                log.warning("server record %r ignored: %s", key, problem)
                continue
            records[key] = record
    return sections


def _write(path: Path, records: dict[str, ServerRecord],
           stopped: dict[str, ServerRecord] | None = None) -> None:
    """Rewrite the file atomically; ``stopped`` None keeps the file's stopped section."""
    if stopped is None:
        stopped = _read_sections(path)[STOPPED]
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".servers.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump({SERVERS: {k: r.to_json() for k, r in records.items()},
                   STOPPED: {k: r.to_json() for k, r in stopped.items()}}, fh, indent=2)
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
    """Forget the server ``name``: one that never came up, or a dead one that ``serve``
    replaces (the new server is what the name means from now on)."""
    with _locked() as path:
        records = _read(path)
        if records.pop(name, None) is not None:
            _write(path, records)


def retire(name: str) -> None:
    """Move the record of ``name``, which ``tfdeploy stop`` stopped, to the stopped section:
    no longer a server (``status``, ``stop``, client commands and ``serve``'s name check
    never see it), but its model config file still says where its request logs are, which
    outlive it (``tfdeploy requests --name``, ``ui --name``).  The newest ``KEEP_STOPPED``
    are kept; the same name stopped again replaces its old one."""
    with _locked() as path:
        sections = _read_sections(path)
        records, stopped = sections[SERVERS], sections[STOPPED]
        record = records.pop(name, None)
        if record is None:
            return
        stopped.pop(name, None)  # re-inserted last: the file keeps stopping order
        stopped[name] = record
        for old in list(stopped)[:-KEEP_STOPPED]:
            del stopped[old]
        _write(path, records, stopped)


def load_stopped() -> dict[str, ServerRecord]:
    """The records ``retire`` kept of stopped servers, oldest stop first.  Nothing here
    runs: never signal, connect to or list them as servers."""
    with _locked() as path:
        return _read_sections(path)[STOPPED]
