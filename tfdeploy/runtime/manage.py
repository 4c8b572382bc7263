"""Server lifecycle across runtimes: serve, status, logs, stop, with the state file."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from tfdeploy.errors import UserError
from tfdeploy.runtime import select, state
from tfdeploy.runtime.base import ServeSpec, model_status, wait_ready
from tfdeploy.runtime.state import ServerRecord


def serve(spec: ServeSpec, runtime: str = "auto", timeout: float = 180,
          progress: Callable[[str], None] | None = None) -> tuple[ServerRecord, str, dict]:
    """Start a server in the background and wait until its model is AVAILABLE."""
    existing = state.load_all().get(spec.name)
    if existing is not None:
        if select.get(existing.runtime).alive(existing):
            # {name}: the CLI says --name, Python name=
            raise UserError.about("a server named {server} is already running ({runtime}, "
                                  "gRPC {grpc}); stop it (`tfdeploy stop {plain}`) or "
                                  "choose another {name}", server=repr(spec.name),
                                  runtime=existing.runtime, grpc=existing.grpc_endpoint,
                                  plain=spec.name)
        state.remove(spec.name)
    chosen, why = select.choose(spec, runtime)
    spec.check_runtime(chosen.name, runtime)
    spec.resolve_ports()
    trust = None
    if spec.ssl_config_file is not None:  # before the server starts: a bad CA says so now
        from tfdeploy.runtime.tls import server_trust

        trust, source = server_trust(spec.ssl_config_file, spec.tls_ca)
        if progress:
            progress(f"TLS: clients trust {source}")
    if progress:
        progress(f"runtime: {chosen.name} ({why})")
    record = chosen.start(spec, progress)
    if spec.model_config_file is not None:
        record.model_config_file = str(spec.model_config_file)
    if trust is not None:
        _record_tls(record, spec, trust, chosen.rest_tls(spec))
    state.save(record)
    try:
        status = wait_ready(chosen, record, timeout)
    except BaseException:
        chosen.stop(record)
        state.remove(record.name)
        raise
    return record, why, status


def _record_tls(record: ServerRecord, spec: ServeSpec, trust: str, rest_tls: bool) -> None:
    """What clients of a TLS server need, in its record: the trusted PEM (a copy in the
    state directory, or the ``--tls-ca`` file), the client certificate, the name."""
    from tfdeploy.runtime.tls import write_trust

    record.grpc_tls, record.rest_tls = True, rest_tls
    record.tls_ca = str(spec.tls_ca or write_trust(record.name, trust))
    record.tls_cert = str(spec.tls_cert) if spec.tls_cert else None
    record.tls_key = str(spec.tls_key) if spec.tls_key else None
    record.tls_server_name = spec.tls_server_name


def run_foreground(spec: ServeSpec, runtime: str = "auto",
                   progress: Callable[[str], None] | None = None,
                   emit: Callable[[str], None] = print) -> int:
    """Serve attached to the terminal until Ctrl-C; ``emit`` gets the server's log lines
    where the runtime does not write to the terminal itself (docker)."""
    chosen, why = select.choose(spec, runtime)
    spec.check_runtime(chosen.name, runtime)
    spec.resolve_ports()
    if progress:
        progress(f"runtime: {chosen.name} ({why}); Ctrl-C stops it")
    if hasattr(chosen, "run_foreground"):
        return chosen.run_foreground(spec)
    record = chosen.start(spec, progress)
    try:
        for line in chosen.logs(record, follow=True, tail=0):
            emit(line)
    except KeyboardInterrupt:
        pass
    finally:
        chosen.stop(record)
    return 0


def live_records() -> list[ServerRecord]:
    """Recorded servers that are still running, oldest first (dead records never count)."""
    records = sorted(state.load_all().values(), key=lambda r: r.started_at)
    return [r for r in records if select.get(r.runtime).alive(r)]


def choose_server(name: str | None = None) -> ServerRecord | None:
    """The server a client command talks to: ``name`` (which must be running), else the
    only live one, else None (nothing recorded runs).  Several live servers and no name is
    an error listing them: guessing would send work to the wrong model."""
    if name is not None:
        record = find(name)
        if not select.get(record.runtime).alive(record):
            raise UserError(f"server {name!r} is not running any more (gRPC "
                            f"{record.grpc_endpoint}): `tfdeploy logs {name}` shows why; "
                            f"`tfdeploy serve --name {name}` starts it again", param="name")
        return record
    records = sorted(state.load_all().values(), key=lambda r: r.started_at)
    live = [r for r in records if select.get(r.runtime).alive(r)]
    if len(live) > 1:
        listing = ", ".join(f"{r.name} (gRPC {r.grpc_endpoint}, REST {r.rest_endpoint})"
                            for r in live)
        raise UserError(f"several servers are running: {listing}; choose one with --name "
                        "or --server", param="name")
    if not live and records:
        # the server the user started died: name it, rather than try a default port and
        # report a refused connection there
        raise UserError(f"no server is running: {_died(records)}; or point at another "
                        "server with --server HOST:PORT")
    return live[0] if live else None


def _died(records: list[ServerRecord]) -> str:
    """What to say about recorded servers that are not running: which, and how to see why."""
    return "; ".join(f"{r.name!r} (gRPC {r.grpc_endpoint}), which `tfdeploy serve` started, "
                     f"has stopped: `tfdeploy logs {r.name}` shows why, `tfdeploy serve "
                     f"--name {r.name}` starts it again" for r in records)


def served_models(record: ServerRecord) -> dict[str, dict[str, int]]:
    """Model name -> its version labels (label -> version), as the server has them now:
    the model config file's current contents (the server re-reads it), or what the
    record says when there is no file or it cannot be read (then labels are unknown)."""
    if record.model_config_file:
        from tfdeploy.serving.config import model_server_config

        try:
            config = model_server_config(record.model_config_file)
        except UserError:
            pass  # unreadable now: the server keeps serving what it had
        else:
            models = {mc.name: dict(sorted(mc.version_labels.items()))
                      for mc in config.model_config_list.config}
            if models:
                return models
    return {m: {} for m in record.models or [record.model_name]}


def request_logs(record: ServerRecord) -> dict[str, Path]:
    """Model name -> the ``filename_prefix`` its requests are logged under, for each
    model of a recorded server whose config has a ``logging_config`` (the model config
    file's current contents: the server re-reads it).  Empty without request logging,
    and for the docker and native runtimes, which cannot log.  What ``tfdeploy requests
    --name`` and ``tfdeploy ui --name`` read."""
    if not record.model_config_file or record.runtime != "embedded":
        return {}
    from tfdeploy.serving.config import model_server_config
    from tfdeploy.serving.request_log import sink_of
    from tfdeploy.tfs.codes import StatusError

    try:
        config = model_server_config(record.model_config_file)
    except UserError:
        return {}
    logs = {}
    for mc in config.model_config_list.config:
        try:
            sink = sink_of(mc)
        except StatusError:  # the server refused this config: nothing is logged by it
            continue
        if sink is not None:
            logs[mc.name] = sink.prefix
    return logs


def client_target(servers: tuple[str, ...] | list[str], transport: str,
                  name: str | None = None, model: str | None = None
                  ) -> tuple[list[str], str]:
    """(addresses, model) for a client command: ``client_endpoints``, and ``model`` or,
    when not given, the only model the server serves (a recorded server, found by name
    or by its address), else TF Serving's usual ``deeplab``.  A server with several
    models and no ``model`` is an error listing them: guessing would predict with the
    wrong one."""
    from tfdeploy.tfs.names import DEFAULT_MODEL_NAME

    addresses = client_endpoints(servers, transport, name)
    if model is not None:
        return addresses, model
    record = target_record(servers, addresses, name)
    if record is None:
        return addresses, DEFAULT_MODEL_NAME
    models = list(served_models(record))
    if len(models) > 1:
        raise UserError(f"server {record.name!r} serves several models ("
                        f"{', '.join(models)}); choose one with --model", param="model")
    return addresses, models[0]


def target_record(servers, addresses: list[str], name: str | None) -> ServerRecord | None:
    """The recorded server a client command talks to: one at the ``--server`` addresses,
    or the one ``choose_server`` picks; None when it is not one of ours."""
    if servers:
        for r in state.load_all().values():
            if {r.grpc_endpoint, r.rest_endpoint} & set(addresses):
                return r
        return None
    return choose_server(name)


def client_tls(servers, addresses: list[str], name: str | None, transport: str):
    """The TlsConfig for a client command that gave no ``--tls-*`` options: the one the
    recorded server it talks to was started with (``serve --ssl-config-file``), else
    None (plain gRPC / HTTP)."""
    from tfdeploy.runtime.tls import record_tls

    return record_tls(target_record(servers, addresses, name), transport)


def class_names(record: ServerRecord | None, model: str) -> dict[int, str]:
    """Class index -> name for ``model`` of a recorded server, from the ``tfdeploy.json``
    its newest version holds (the export records them); empty when not known (a
    server that is not ours, a remote base path, a model exported without names)."""
    import json

    from tfdeploy.tfs.versions import METADATA_FILE, numeric_dirs

    if record is None:
        return {}
    base = record.base_path
    if record.model_config_file:
        from tfdeploy.serving.config import model_server_config

        try:
            config = model_server_config(record.model_config_file)
        except UserError:
            return {}
        base = next((mc.base_path for mc in config.model_config_list.config
                     if mc.name == model), "")
    if not base or "://" in base:
        return {}
    for version_dir in reversed(numeric_dirs(Path(base)).values()):
        try:
            names = json.loads((version_dir / METADATA_FILE).read_text()).get("class_names")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(names, list):
            return {i: str(n) for i, n in enumerate(names)}
    return {}


def client_endpoints(servers: tuple[str, ...] | list[str], transport: str,
                     name: str | None = None) -> list[str]:
    """Where a client command sends requests: the ``--server`` values when given, else
    the server called ``name``, else the only running server ``tfdeploy serve`` started,
    else TF Serving's default port on localhost.  The client itself only takes plain
    addresses."""
    from tfdeploy.client.pool import parse_addresses
    from tfdeploy.tfs.names import DEFAULT_PORTS

    addresses = parse_addresses(servers, transport)
    if addresses:
        if name is not None:
            raise UserError("give --name or --server, not both", param="name")
        return addresses
    record = choose_server(name)
    if record is None:
        return [f"localhost:{DEFAULT_PORTS[transport]}"]
    return [record.grpc_endpoint if transport == "grpc" else record.rest_endpoint]


def find(name: str | None) -> ServerRecord:
    records = state.load_all()
    if name is None:
        if not records:
            raise UserError("no servers started by tfdeploy (tfdeploy serve starts one)")
        if len(records) > 1:
            raise UserError(f"several servers are running ({', '.join(sorted(records))}); "
                            "name one")
        return next(iter(records.values()))
    if name not in records:
        raise UserError(f"no server named {name!r} (known: "
                        f"{', '.join(sorted(records)) or 'none'})")
    return records[name]


def stopped_record(name: str) -> ServerRecord | None:
    """The record kept of the last server called ``name`` that ``tfdeploy stop`` stopped,
    when no server of that name is recorded now (a name served again is that server);
    else None.  Only for what outlives the server, its request logs: never use it to
    reach or signal a server."""
    if name in state.load_all():
        return None
    return state.load_stopped().get(name)


def find_or_stopped(name: str) -> ServerRecord:
    """The server ``name`` as ``find`` finds it (running or dead), else its
    ``stopped_record``: what ``requests --name`` reads the request logs' place from."""
    return stopped_record(name) or find(name)


def describe(record: ServerRecord) -> dict:
    """The record plus what the server says now: ``running``, ``versions`` (of its
    first model), ``model_versions`` (every model it serves -> version -> state) and
    ``model_labels`` (model -> label -> version).  With a model config file, the models
    are the file's as it is now, which the server follows (it re-reads the file)."""
    runtime = select.get(record.runtime)
    alive = runtime.alive(record)
    per_model = {}
    models = served_models(record)
    problem = None
    for model in models:
        try:
            versions = model_status(record, model) if alive and not problem else None
        except UserError as exc:  # its certificate no longer verifies: say so, go on
            versions, problem = None, exc.message
        per_model[model] = {str(k): v for k, v in (versions or {}).items()}
    return {**record.to_json(), "running": alive, "models": list(models),
            # label -> version of each model (from the model config file)
            "model_labels": models,
            # a record whose server is gone: where its last words are
            "hint": problem if alive else f"`tfdeploy logs {record.name}` shows why it "
                                          f"stopped; `tfdeploy stop {record.name}` forgets it",
            "versions": next(iter(per_model.values())), "model_versions": per_model,
            "grpc": record.grpc_endpoint, "rest": record.rest_endpoint}


def status(name: str | None = None) -> list[dict]:
    records = state.load_all()
    if name is not None:
        records = {name: find(name)}
    return [describe(r) for r in sorted(records.values(), key=lambda r: r.started_at)]


def logs(name: str | None, follow: bool = False, tail: int = 100) -> Iterator[str]:
    record = find(name)
    yield from select.get(record.runtime).logs(record, follow=follow, tail=tail)


class StopError(UserError):
    """Some servers could not be stopped; the others were.  Exit code 1."""

    exit_code = 1

    def __init__(self, stopped: list[str], failed: dict[str, str]):
        done = f"stopped {', '.join(stopped)}; " if stopped else ""
        super().__init__(done + "could not stop " + "; ".join(
            f"{name} ({why})" for name, why in failed.items()))
        self.stopped, self.failed = stopped, failed


def stop(name: str | None = None, all_servers: bool = False, timeout: float = 30) -> list[str]:
    """Stop the only server, ``name``, or all of them; returns the names stopped.

    Each server is handled on its own: one that cannot be stopped (its docker engine is
    down, say) is reported and kept in the state file for another try, and the others are
    still stopped.  StopError then says which.  A process is signalled only when it is
    provably the one we started (same pid and start time)."""
    targets = list(state.load_all().values()) if all_servers else [find(name)]
    stopped: list[str] = []
    failed: dict[str, str] = {}
    for record in targets:
        try:
            select.get(record.runtime).stop(record, timeout)
        except Exception as exc:  # noqa: BLE001 (any runtime failure: report, go on)
            failed[record.name] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            continue
        state.retire(record.name)
        stopped.append(record.name)
    if all_servers:  # containers of ours the state file lost track of
        try:
            from tfdeploy.runtime.docker import DockerRuntime

            for c in DockerRuntime().managed_containers():
                c.remove(force=True)
                stopped.append(c.labels.get("tfdeploy.name", c.name))
        except UserError:
            pass  # no engine: nothing of ours can be running there
        except Exception as exc:  # noqa: BLE001
            failed["docker containers"] = str(exc).splitlines()[0]
    if failed:
        raise StopError(stopped, failed)
    return stopped


def _from_record(field: str, doc: str) -> property:
    """A read-only Server attribute that is a field of its record."""
    return property(lambda self: getattr(self.record, field), doc=doc)


class Server:
    """A running model server that ``tfdeploy serve`` (or ``tfdeploy.serve``) started.

    Use it as a context manager to stop the server when the block ends::

        with tfdeploy.serve("models/deeplab", runtime="embedded") as server:
            mask = server.client().predict("scene.jpg")
    """

    def __init__(self, record: ServerRecord, why: str = "",
                 versions: dict[int, str] | None = None):
        self.record, self.why = record, why
        #: version -> state of the (first) model when the server became ready
        self.versions = dict(versions or {})

    name = _from_record("name", "The server's name (for status, logs, stop).")
    runtime = _from_record("runtime", "docker, native or embedded.")
    model_name = _from_record("model_name", "The (first) model it serves.")
    grpc_address = _from_record("grpc_endpoint", "``host:port`` of the gRPC API.")

    @property
    def rest_url(self) -> str:
        """``http(s)://host:port`` of the REST API (models under ``/v1/models/<name>``)."""
        return self.record.rest_url

    @property
    def running(self) -> bool:
        return select.get(self.record.runtime).alive(self.record)

    def status(self) -> dict:
        """What ``tfdeploy status`` shows for this server (see ``describe``)."""
        return describe(self.record)

    def logs(self, tail: int = 100) -> list[str]:
        """The last ``tail`` lines of the server's log."""
        return list(select.get(self.record.runtime).logs(self.record, tail=tail))

    def client(self, transport: str = "grpc", **options):
        """A ``tfdeploy.Client`` for this server's model over ``transport``; with several
        models (a model config file), pass ``model=`` (``label=`` picks a labelled
        version)."""
        from tfdeploy.client.predict import Client

        address = self.grpc_address if transport == "grpc" else self.record.rest_endpoint
        if options.get("model") is None:
            models = list(served_models(self.record))
            if len(models) > 1:
                raise UserError(f"server {self.name!r} serves several models "
                                f"({', '.join(models)}); pass model=", param="model")
            options["model"] = models[0]
        if "tls" not in options:
            from tfdeploy.runtime.tls import record_tls

            options["tls"] = record_tls(self.record, transport)
        client = Client(address, transport, **options)
        client.class_names = class_names(self.record, client.model)
        return client

    def stop(self, timeout: float = 30) -> None:
        """Stop the server (in-flight requests get ``timeout`` seconds) and forget it."""
        select.get(self.record.runtime).stop(self.record, timeout)
        state.retire(self.record.name)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (f"Server({self.name!r}, runtime={self.runtime!r}, "
                f"grpc={self.grpc_address!r}, rest={self.rest_url!r})")
