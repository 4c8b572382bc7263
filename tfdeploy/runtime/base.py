"""What every runtime shares: the serve spec, the interface, port checks and readiness.

Readiness means what TF Serving itself reports: the model's REST status endpoint lists a
version as AVAILABLE.  A server that does not get there in time is stopped, and the error
carries the last lines of its log so the user sees why.
"""

from __future__ import annotations

import json
import re
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
from tfdeploy.tfs.flags import BY_NAME, FLAGS, Kind, flag_name, format_flag

#: Seconds between re-reads of a model config file by a server ``tfdeploy serve`` starts.
DEFAULT_CONFIG_POLL = 5.0


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
    #: with a model config file: seconds between re-reads of it (0 = never, as
    #: tensorflow_model_server's own default), so editing the file changes the server
    config_poll: float = DEFAULT_CONFIG_POLL
    #: tensorflow_model_server flags passed through as they are (``serve ... -- FLAGS``)
    extra_flags: list[str] = field(default_factory=list)
    #: environment of the server (docker: the container; native/embedded: the process)
    env: dict[str, str] = field(default_factory=dict)
    #: docker only: CPU limit (``--cpus``), memory limit (``512m``, ``2g``; None: the
    #: docker runtime's default, ``none``: no limit), extra bind mounts
    #: ``HOST:CONTAINER[:ro|rw]`` (read-only unless ``:rw``), the user the container runs
    #: as (``UID[:GID]``; None: a non-root default) and its pids limit
    cpus: float | None = None
    memory: str | None = None
    volumes: list[str] = field(default_factory=list)
    user: str | None = None
    pids_limit: int | None = None
    #: TLS: the SSLConfig text (``--ssl_config_file``: gRPC over TLS; REST over HTTPS
    #: where the server is tfdeploy-model-server), the CA that signed its certificate
    #: (None: found from the config, see runtime/tls.py), a client certificate and key
    #: (needed when the config has ``client_verify``) and the name the certificate
    #: carries when it is not the address's host; all go into the record for clients
    ssl_config_file: Path | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_server_name: str | None = None

    def __post_init__(self) -> None:
        from tfdeploy.runtime.state import check_name

        check_name(self.model_name, "model_name")
        self.name = check_name(self.name or self.model_name)
        if self.batching_parameters_file is not None:
            self.enable_batching = True  # a parameters file means "batch like this"
        if self.base_path is None and self.model_config_file is None:
            raise UserError("give a model base path (e.g. models/deeplab) or a model config file")
        if self.base_path is not None:
            self.base_path = Path(self.base_path).absolute()
            if not self.base_path.is_dir():
                raise UserError(f"{self.base_path}: no such model base path "
                                "(run `tfdeploy export` first)")
        for attr in ("model_config_file", "batching_parameters_file", "monitoring_config_file",
                     "ssl_config_file", "tls_ca", "tls_cert", "tls_key"):
            value = getattr(self, attr)
            if value is not None:
                value = Path(value).absolute()
                if not value.is_file():
                    raise UserError(f"no such file {value}", param=attr)
                setattr(self, attr, value)
        if self.grpc_port == self.rest_port and self.grpc_port != 0:
            raise UserError("must differ from the REST port", param="grpc_port")
        for volume in self.volumes:
            parse_volume(volume)
        if (self.memory is not None and self.memory.strip().lower() != "none"
                and not _MEMORY.fullmatch(self.memory.strip().lower())):
            raise UserError(f"{self.memory!r} is not a size like 512m or 2g (or none)",
                            param="memory")
        if self.user is not None and not _USER.fullmatch(self.user):
            raise UserError(f"{self.user!r} is not UID[:GID] (numbers, e.g. 1000:1000)",
                            param="user")
        if self.pids_limit is not None and self.pids_limit < 16:
            raise UserError("must be at least 16 (TF Serving runs dozens of threads)",
                            param="pids_limit")
        if self.cpus is not None and self.cpus <= 0:
            raise UserError("must be > 0", param="cpus")
        if self.config_poll < 0:
            raise UserError("must be >= 0 (0 = never re-read the model config file)",
                            param="config_poll")
        check_server_flags(self.extra_flags)
        self._check_tls()

    def _check_tls(self) -> None:
        """The --tls-* options describe how clients reach a TLS server: without
        --ssl-config-file they would reach nothing.  A server that verifies clients
        (``client_verify``) needs a client certificate for the readiness check."""
        given = [a for a in ("tls_ca", "tls_cert", "tls_key", "tls_server_name")
                 if getattr(self, a)]
        if self.ssl_config_file is None:
            if given:
                raise UserError.about("needs {ssl_config_file} (it says how clients "
                                      "reach a TLS server)", param=given[0])
            return
        if (self.tls_cert is None) != (self.tls_key is None):
            raise UserError("a client certificate needs its key, and a key its certificate",
                            param="tls_cert")
        from tfdeploy.runtime.tls import client_verify

        if client_verify(self.ssl_config_file) and self.tls_cert is None:
            raise UserError.about("{config} asks clients for a certificate "
                                  "(client_verify): give one it accepts with {tls_cert} and "
                                  "{tls_key}, so the readiness check and client commands "
                                  "can connect", param="tls_cert",
                                  config=self.ssl_config_file)

    def model_names(self) -> list[str]:
        """Every model this server serves: the config file's, or the one model."""
        if self.model_config_file is None:
            return [self.model_name]
        from tfdeploy.serving.config import model_server_config

        config = model_server_config(self.model_config_file)
        return [mc.name for mc in config.model_config_list.config] or [self.model_name]

    def resolve_ports(self) -> None:
        """Port 0 means "any free one": pick them now, so the record holds real ports."""
        if self.grpc_port == 0:
            self.grpc_port = free_port(self.host, avoid=self.rest_port)
        if self.rest_port == 0:
            self.rest_port = free_port(self.host, avoid=self.grpc_port)

    def logged_models(self) -> list[str]:
        """The models whose config has a ``logging_config`` (request logging)."""
        if self.model_config_file is None:
            return []
        from tfdeploy.serving.config import model_server_config

        config = model_server_config(self.model_config_file)
        return [mc.name for mc in config.model_config_list.config
                if mc.HasField("logging_config")]

    def check_request_logging(self, runtime: str) -> None:
        """tensorflow_model_server (the docker and native runtimes) has no request logger:
        it refuses a model config with ``logging_config`` at start-up ("No
        request-logger-creator provided"); say so before starting it."""
        logged = self.logged_models()
        if logged:
            raise UserError(f"model {', '.join(logged)} has a logging_config: "
                            f"tensorflow_model_server (the {runtime} runtime) does not log "
                            "requests and refuses such a config (\"No request-logger-creator "
                            "provided\"); use --runtime embedded, which logs them, or remove "
                            "logging_config", param="runtime")

    def check_runtime(self, runtime: str, asked: str = "auto") -> None:
        """Refuse options ``runtime`` would silently ignore (an option that reaches
        nothing is a bug report waiting to happen).  Under ``auto`` an ``--image`` that
        cannot be used is a reason to fall back, which the runtime choice reports."""
        if runtime != "docker":
            docker_only = {"cpus": self.cpus, "memory": self.memory,
                           "volume": self.volumes, "restart": self.restart,
                           "user": self.user, "pids_limit": self.pids_limit,
                           "image": self.image if asked != "auto" else None}
            given = [k for k, v in docker_only.items() if v]
            if given:
                # argument names as {placeholders}: flags in the CLI, names in Python
                names = ", ".join("{" + ("volumes" if g == "volume" else g) + "}"
                                  for g in given)
                raise UserError.about(f"only the docker runtime takes {names} (the "
                                      "{chosen} runtime was chosen; use {runtime} docker)",
                                      param=given[0], chosen=runtime)
        if runtime in ("docker", "native"):
            self.check_request_logging(runtime)
        if runtime == "native":
            ours = [f for f in self.extra_flags if _kind(f) is Kind.OURS]
            if ours:
                raise UserError(f"{', '.join(ours)}: only tfdeploy-model-server has this "
                                "flag, tensorflow_model_server would refuse it",
                                param="runtime")
        if runtime == "embedded":
            ignored = [f for f in self.extra_flags
                       if _kind(f) in (Kind.WARNED, Kind.REFUSED)]
            if ignored:
                raise UserError(f"the embedded server does not implement "
                                f"{', '.join(ignored)} and would ignore it; use the docker "
                                "or native runtime for that flag", param="runtime")

    def server_flags(self, *, config_path: str | None = None, batching_path: str | None = None,
                     monitoring_path: str | None = None, ssl_path: str | None = None
                     ) -> list[str]:
        """tensorflow_model_server flags beyond model name/base path (paths as seen by the
        server, which differ inside a container)."""
        flags = [format_flag("file_system_poll_wait_seconds", self.poll_seconds)]
        if self.model_config_file:
            flags.append(format_flag("model_config_file",
                                     config_path or self.model_config_file))
            if self.config_poll > 0:
                flags.append(format_flag("model_config_file_poll_wait_seconds",
                                         self.config_poll))
        if self.enable_batching:
            flags.append(format_flag("enable_batching", True))
            if self.batching_parameters_file:
                flags.append(format_flag("batching_parameters_file",
                                         batching_path or self.batching_parameters_file))
        if self.monitoring_config_file:
            flags.append(format_flag("monitoring_config_file",
                                     monitoring_path or self.monitoring_config_file))
        if self.ssl_config_file:
            flags.append(format_flag("ssl_config_file", ssl_path or self.ssl_config_file))
        return flags + list(self.extra_flags)


_MEMORY = re.compile(r"\d+(\.\d+)?[bkmg]?")
_USER = re.compile(r"\d+(:\d+)?")


def _kind(arg: str) -> Kind | None:
    flag = BY_NAME.get(flag_name(arg))
    return flag.kind if flag else None


def known_server_flags() -> set[str]:
    """Every flag name of the table: tensorflow_model_server's (implemented by the
    embedded server or not) and tfdeploy-model-server's own."""
    return set(BY_NAME)


def pass_through_help() -> str:
    """Which flags ``tfdeploy serve ... -- FLAGS`` takes, for which runtime (CLI help)."""
    def names(*kinds: Kind) -> str:
        return ", ".join(f"--{f.name}" for f in FLAGS
                         if f.kind in kinds and not f.serve_option and not f.legacy)

    return ("Flags after -- (for every runtime): " + names(Kind.OFFICIAL)
            + ".  Embedded only: " + names(Kind.OURS)
            + ".  Docker or native only (the embedded server does not implement them): "
            + names(Kind.WARNED, Kind.REFUSED) + ".")


def check_server_flags(flags: list[str]) -> None:
    """Flags after ``--`` must be tensorflow_model_server flags, as ``--name=value`` (or
    ``--name value``), and not ones ``tfdeploy serve`` sets from its own options."""
    if not flags:
        return
    known = known_server_flags()
    own = {f.name: f.serve_option for f in FLAGS if f.serve_option}
    i = 0
    while i < len(flags):
        flag, name = flags[i], flag_name(flags[i])
        if not name:
            raise UserError(f"{flag!r}: tensorflow_model_server flags look like --name=value")
        if name in own:
            raise UserError(f"{flag}: tfdeploy serve sets this itself; use {own[name]}")
        if name not in known:
            raise UserError(f"{flag}: not a tensorflow_model_server flag (known: "
                            f"{', '.join(sorted(known - set(own)))})")
        if "=" not in flag and i + 1 < len(flags) and not flags[i + 1].startswith("--"):
            flags[i:i + 2] = [f"{flag}={flags[i + 1]}"]
        i += 1


def parse_volume(volume: str) -> tuple[str, str, bool]:
    """``HOST:CONTAINER[:ro|rw]`` -> (absolute host path, container path, read_only).
    Read-only unless ``:rw`` is asked; the docker socket (or a folder holding it) is
    refused: a container that reaches the engine is root on the host."""
    parts = volume.split(":")
    mode = "ro"
    if len(parts) == 3 and parts[2] in ("ro", "rw"):
        mode = parts.pop()
    if len(parts) != 2 or not parts[0] or not parts[1].startswith("/"):
        raise UserError(f"{volume!r}: use HOST_PATH:/container/path[:ro|rw]", param="volume")
    host = Path(parts[0]).expanduser().absolute()
    if not host.exists():
        raise UserError(f"{volume!r}: no such path {host}", param="volume")
    for sock in _docker_sockets():
        if sock == host.resolve() or host.resolve() in sock.parents:
            raise UserError(f"{volume!r}: mounts the docker socket {sock}, which gives the "
                            "container root on this host; refused", param="volume")
    return str(host), parts[1], mode == "ro"


def _docker_sockets() -> list[Path]:
    """The engine's UNIX sockets: the usual paths, ``DOCKER_HOST``'s, as real paths."""
    import os
    import stat

    candidates = ["/var/run/docker.sock", "/run/docker.sock",
                  str(Path.home() / ".docker" / "run" / "docker.sock")]
    host = os.environ.get("DOCKER_HOST", "")
    if host.startswith("unix://"):
        candidates.append(host[len("unix://"):])
    found = []
    for path in candidates:
        try:
            if stat.S_ISSOCK(os.stat(path).st_mode):
                found.append(Path(path).resolve())
        except OSError:
            continue
    return found


def free_port(host: str = "127.0.0.1", avoid: int = 0) -> int:
    """A port nothing listens on now (the kernel's choice)."""
    while True:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port != avoid:
            return port


class Runtime(Protocol):
    name: str

    def available(self, spec: ServeSpec) -> tuple[bool, str]:
        """Whether this runtime can serve ``spec`` here, and why (for --runtime auto)."""

    def start(self, spec: ServeSpec, progress: Callable[[str], None] | None = None
              ) -> ServerRecord: ...

    def alive(self, record: ServerRecord) -> bool: ...

    def rest_tls(self, spec: ServeSpec) -> bool:
        """Whether its REST speaks HTTPS under ``--ssl_config_file`` (gRPC always does)."""

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
    """{version: state} from the REST status endpoint (over HTTPS with the record's CA
    when the server speaks it); None if the server does not answer.  A certificate
    the record's CA does not verify is a UserError at once: retrying cannot fix it."""
    import ssl

    from tfdeploy.client.tls import handshake_message
    from tfdeploy.runtime.tls import record_tls

    tls = record_tls(record, "rest")
    url = f"{record.rest_url}/v1/models/{model or record.model_name}"
    try:
        opener = tls.opener().open if tls is not None else urllib.request.urlopen
        with opener(url, timeout=timeout) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError:
        return {}
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, ssl.SSLCertVerificationError):
            raise UserError(handshake_message(record.rest_endpoint, str(reason), tls)
                            ) from None
        return None
    return {int(v["version"]): v["state"] for v in body.get("model_version_status", [])}


#: What tensorflow_model_server logs when a model's base path gives it nothing to load
#: (the embedded server uses the same words): waiting longer will not help.
_NOTHING_TO_LOAD = (r"No versions of servable {model} found",
                    r"Could not find base path .* for servable {model}\b",
                    r"cannot read base path of model {model}\b")


#: What a failed load of one of a model's versions looks like in the log (ours, and
#: tensorflow_model_server's first failure and its giving up).  At start-up neither
#: server answers until each model's latest version loaded or failed for good, which
#: takes every retry (five, a minute apart, by default): the first failure says enough.
_FAILED_LOAD = (r"failed to load {model} version \d+",
                r"Loading servable: \{{name: {model} version: \d+\}} failed",
                r"Encountered an error for servable version \{{name: {model} version: \d+\}}")


def _failed_load(lines: list[str], model: str) -> list[str]:
    found = re.compile("|".join(p.format(model=re.escape(model)) for p in _FAILED_LOAD))
    return [line for line in lines if found.search(line)]


def _nothing_to_load(lines: list[str], model: str) -> list[str]:
    """The log lines saying ``model`` has no version to load (empty, missing or
    unreadable base path)."""
    found = re.compile("|".join(p.format(model=re.escape(model)) for p in _NOTHING_TO_LOAD))
    return [line for line in lines if found.search(line)]


def wait_ready(runtime: Runtime, record: ServerRecord, timeout: float = 120
               ) -> dict[int, str]:
    """Block until every model of the server (``record.models``: the config file's, or
    the one) has a version AVAILABLE; return the first model's versions.  Stops the
    server and raises, with the log lines about the models that did not come up, when
    one never will: all its versions failed, its base path has none or cannot be read
    (said at once, not after ``timeout``), the server exited, or time ran out."""
    models = record.models or [record.model_name]
    deadline = time.monotonic() + timeout
    statuses: dict[str, dict[int, str] | None] = {}
    hopeless: dict[str, str] = {}
    while time.monotonic() < deadline:
        statuses = {m: model_status(record, m) for m in models}
        if all(st and "AVAILABLE" in st.values() for st in statuses.values()):
            return statuses[models[0]]
        if not runtime.alive(record):
            break
        hopeless = {m: "could not load any version" for m, st in statuses.items()
                    if st and set(st.values()) == {"END"}}
        if any(not st for st in statuses.values()):
            lines = list(runtime.logs(record, tail=500))
            hopeless.update({m: "found no version to load" for m, st in statuses.items()
                             if not st and _nothing_to_load(lines, m)})
            hopeless.update({m: "could not load any version" for m, st in statuses.items()
                             if st is None and _failed_load(lines, m)})
        if hopeless:
            break
        time.sleep(0.25)
    alive = runtime.alive(record)
    lines = list(runtime.logs(record, tail=500))
    waiting = [m for m, st in statuses.items() if not (st and "AVAILABLE" in st.values())]
    if hopeless and len(models) == 1:
        reason = next(iter(hopeless.values())).replace("version", "version of its model")
    elif hopeless:
        reason = "; ".join(f"model {m} {why}" for m, why in hopeless.items())
    elif not alive:
        reason = "exited"
    else:
        reason = (f"not ready after {timeout:.0f}s"
                  + (f" (waiting for model {', '.join(waiting)})" if len(models) > 1 else ""))
    about = [line for line in lines if any(m in line for m in (hopeless or waiting))]
    tail = "\n".join((about or lines)[-15:])
    runtime.stop(record)
    shown = {m: statuses.get(m) for m in (hopeless or waiting)} if len(models) > 1 else (
        statuses.get(models[0]))
    raise UserError(f"server {record.name} {reason} (model status: {shown}); "
                    f"last log lines{' about ' + ', '.join(hopeless or waiting) if about else ''}"
                    f":\n{tail}")
