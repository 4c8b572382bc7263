"""Starting the ``tfdeploy ui`` app: which model server, which class names, which labels,
then uvicorn on a socket bound before the URL is printed (``--port 0`` picks a free one,
and the printed URL is always the one that answers)."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path

from tfdeploy.errors import UserError
from tfdeploy.runtime.state import ServerRecord
from tfdeploy.tfs.names import DEFAULT_MODEL_NAME
from tfdeploy.tfs.versions import METADATA_FILE, numeric_dirs

#: Pascal VOC's 21 classes (the seed's checkpoints), in mask index order.
VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car",
               "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
               "pottedplant", "sheep", "sofa", "train", "tvmonitor")


def class_names(spec: str, record: ServerRecord | None = None,
                model: str | None = None) -> list[str]:
    """``voc``, ``demo``, or names separated by commas, in class index order.  ``auto``:
    what the served export says when the server is one ``tfdeploy serve`` started here
    (the demo checkpoint's names, or VOC's for a 21-class model), else none (the page
    then says ``class N``)."""
    from tfdeploy.demo.scenes import CLASSES as DEMO_CLASSES

    spec = spec.strip()
    if spec == "voc":
        return list(VOC_CLASSES)
    if spec == "demo":
        return list(DEMO_CLASSES)
    if spec != "auto":
        names = [n.strip() for n in spec.split(",")]
        if not all(names):
            raise UserError(f"--classes {spec!r}: an empty class name", param="classes")
        return names
    meta = _export_metadata(_base_path(record, model))
    classes = meta.get("config", {}).get("num_classes") if meta else None
    if classes == len(DEMO_CLASSES) and "demo" in str(meta.get("checkpoint", "")):
        return list(DEMO_CLASSES)
    if classes == len(VOC_CLASSES):
        return list(VOC_CLASSES)
    return []


def _base_path(record: ServerRecord | None, model: str | None) -> str:
    """Where the recorded server reads ``model`` (its first model by default): the
    record's base path, or the model config file's entry for it."""
    if record is None:
        return ""
    if record.base_path:
        return record.base_path
    config = _config(record)
    entries = list(config.model_config_list.config) if config is not None else []
    chosen = [m for m in entries if m.name == model] if model else entries
    return chosen[0].base_path if chosen else ""


def _export_metadata(base_path: str) -> dict:
    """The newest version's export metadata under ``base_path``, if readable."""
    if not base_path:
        return {}
    base = Path(base_path)
    try:
        newest = max(numeric_dirs(base), default=None)
        if newest is None:
            return {}
        return json.loads((base / str(newest) / METADATA_FILE).read_text())
    except (OSError, ValueError, TypeError):
        return {}


def _config(record: ServerRecord):
    """The ModelServerConfig the recorded server was started with, None without one (or
    when it cannot be read here: a docker server's path is inside its container)."""
    path = next((arg.split("=", 1)[1] for arg in record.command
                 if arg.startswith("--model_config_file=")), None)
    if not path:
        return None
    try:
        from tfdeploy.serving.config import model_server_config

        return model_server_config(path)
    except (UserError, ImportError):
        return None


def record_labels(record: ServerRecord | None) -> dict[str, dict[str, int]]:
    """model -> label -> version, from the model config file the recorded server was
    started with.  TF Serving's status API does not report labels, so this is the only
    place they can be listed from; for any other server the page lists versions only."""
    config = _config(record) if record is not None else None
    if config is None:
        return {}
    return {m.name: dict(m.version_labels) for m in config.model_config_list.config
            if m.version_labels}


def resolve(server: str | None, name: str | None) -> tuple[str, ServerRecord | None]:
    """(REST address, the server record when it is one ``tfdeploy serve`` started)."""
    from tfdeploy.runtime.manage import choose_server, stopped_record

    if server:
        if name:
            raise UserError("give --name or --server, not both", param="name")
        return server, None
    # A server `tfdeploy stop` stopped: its request logs can still be browsed (the page
    # says no server answers where a prediction is asked for).
    record = (stopped_record(name) if name else None) or choose_server(name)
    if record is None:
        return "localhost:8501", None
    return record.rest_endpoint, record


def request_logs(request_log: str | Path | None, record: ServerRecord | None) -> list[Path]:
    """The logs the page browses: ``request_log`` (a directory, a ``filename_prefix`` or
    one file), else those of the recorded server's models with a ``logging_config`` (the
    same lookup as ``tfdeploy requests --name``), else none."""
    if request_log is not None:
        path = Path(request_log).expanduser()
        if not path.exists() and not path.parent.is_dir():
            raise UserError(f"{path}: no such file, directory or log prefix",
                            param="request_log")
        return [path]
    if record is None:
        return []
    from tfdeploy.runtime.manage import request_logs as recorded

    return list(dict.fromkeys(recorded(record).values()))


def bind(host: str, port: int) -> socket.socket:
    try:
        sock = socket.create_server((host, port), reuse_port=False)
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror or exc})",
                        param="port") from None
    return sock


def run(server: str | None = None, name: str | None = None, *, model: str | None = None,
        host: str = "127.0.0.1", port: int = 0, classes: str = "auto",
        max_upload_mb: float = 32, open_browser: bool = False,
        request_log: str | Path | None = None,
        ready: Callable[[str], None] | None = None) -> None:
    """Serve the page until interrupted; ``ready(url)`` is called once it listens."""
    import uvicorn

    from tfdeploy.webui.app import Backend, create_app

    address, record = resolve(server, name)
    models = [model] if model else (list(record.models or [record.model_name]) if record
                                    else [DEFAULT_MODEL_NAME])
    from tfdeploy.runtime.tls import record_tls

    backend = Backend(address, models, classes=class_names(classes, record, models[0]),
                      labels=record_labels(record), max_upload=int(max_upload_mb * 2**20),
                      request_logs=request_logs(request_log, record),
                      tls=record_tls(record, "rest"),
                      served_names=classes.strip() == "auto")
    sock = bind(host, port)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{sock.getsockname()[1]}/"
    config = uvicorn.Config(create_app(backend), log_level="warning", access_log=False,
                            lifespan="off")
    if ready:
        ready(url)
    if open_browser:
        import webbrowser

        webbrowser.open(url)
    uvicorn.Server(config).run(sockets=[sock])
