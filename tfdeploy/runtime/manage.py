"""Server lifecycle across runtimes: serve, status, logs, stop, with the state file."""

from __future__ import annotations

from collections.abc import Callable, Iterator

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
            raise UserError(f"a server named {spec.name!r} is already running "
                            f"({existing.runtime}, gRPC {existing.grpc_endpoint}); "
                            f"`tfdeploy stop {spec.name}` or pass --name")
        state.remove(spec.name)
    chosen, why = select.choose(spec, runtime)
    if progress:
        progress(f"runtime: {chosen.name} ({why})")
    record = chosen.start(spec, progress)
    state.save(record)
    try:
        status = wait_ready(chosen, record, timeout)
    except BaseException:
        chosen.stop(record)
        state.remove(record.name)
        raise
    return record, why, status


def run_foreground(spec: ServeSpec, runtime: str = "auto",
                   progress: Callable[[str], None] | None = None,
                   emit: Callable[[str], None] = print) -> int:
    """Serve attached to the terminal until Ctrl-C; ``emit`` gets the server's log lines
    where the runtime does not write to the terminal itself (docker)."""
    chosen, why = select.choose(spec, runtime)
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


def client_endpoints(servers: tuple[str, ...] | list[str], transport: str) -> list[str]:
    """Where a client command sends requests: the ``--server`` values when given, else
    the server ``tfdeploy serve`` started last, else TF Serving's default port on
    localhost.  The client itself only takes plain addresses."""
    from tfdeploy.client.pool import parse_addresses
    from tfdeploy.tfs.names import DEFAULT_PORTS

    addresses = parse_addresses(servers, transport)
    if addresses:
        return addresses
    return [state.latest_endpoint(transport) or f"localhost:{DEFAULT_PORTS[transport]}"]


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


def describe(record: ServerRecord) -> dict:
    runtime = select.get(record.runtime)
    alive = runtime.alive(record)
    versions = model_status(record) if alive else None
    return {**record.to_json(), "running": alive,
            "versions": {str(k): v for k, v in (versions or {}).items()},
            "grpc": record.grpc_endpoint, "rest": record.rest_endpoint}


def status(name: str | None = None) -> list[dict]:
    records = state.load_all()
    if name is not None:
        records = {name: find(name)}
    return [describe(r) for r in sorted(records.values(), key=lambda r: r.started_at)]


def logs(name: str | None, follow: bool = False, tail: int = 100) -> Iterator[str]:
    record = find(name)
    yield from select.get(record.runtime).logs(record, follow=follow, tail=tail)


def stop(name: str | None = None, all_servers: bool = False, timeout: float = 30) -> list[str]:
    targets = list(state.load_all().values()) if all_servers else [find(name)]
    stopped = []
    for record in targets:
        select.get(record.runtime).stop(record, timeout)
        state.remove(record.name)
        stopped.append(record.name)
    if all_servers:  # containers of ours the state file lost track of
        try:
            from tfdeploy.runtime.docker import DockerRuntime

            for c in DockerRuntime().managed_containers():
                c.remove(force=True)
                stopped.append(c.labels.get("tfdeploy.name", c.name))
        except UserError:
            pass
    return stopped
