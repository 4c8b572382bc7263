"""Moving a version label on a running server, TF Serving's way.

tensorflow_model_server has no call that changes one label: HandleReloadConfigRequest
replaces the whole ModelServerConfig.  So we send the config the server runs (the model
config file it was started with, or the one model of ``--model_base_path``) with only the
label changed.  A server that polls its config file would put the old label back at the
next poll (tensorflow_model_server reloads the file at every poll), so that file is
rewritten too, atomically (a temporary file renamed over it), after the server accepted
the change.  The rewrite is an edit of the file's text (``file_text``): only the
label's value changes, or one entry is added, and the user's comments, order and layout
stay; a layout the editor does not follow is the one case printed in full again, with a
warning.  Where the label pointed before is kept in a small JSON file in the state
dir (``labels.json``), which is what ``rollback`` goes back to.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tfdeploy.client.tls import TlsConfig
from tfdeploy.errors import UserError
from tfdeploy.rollout import config_text
from tfdeploy.runtime.state import ServerRecord, state_dir
from tfdeploy.tfs import protos
from tfdeploy.tfs.flags import flag_name

#: the config as the docker runtime mounts it: a copy, bind mounted as a single file
DOCKER_CONFIG = "/config/models.config"

log = logging.getLogger("tfdeploy.rollout")


@dataclass
class ServedConfig:
    """What a server runs and how to change it.

    ``config`` is the ModelServerConfig to send (with labels edited in place);
    ``file`` the model config file to rewrite so a poll keeps the change (None when the
    server does not poll one); ``key`` names this config in the label history (its
    file when it has one: a restarted server reads the same file); ``text`` the file's
    text ``config`` was parsed from, which a label move edits."""

    config: object
    file: Path | None
    key: str
    #: the file is bind mounted into a container as itself (docker): a rename would
    #: leave the container on the old inode, so it is rewritten in place
    in_place: bool = False
    text: str | None = None


def _config_pb2():
    return protos.module("tensorflow_serving.config.model_server_config_pb2")


def read_config_file(path: Path) -> tuple[str, object]:
    """A model config file's text and the ModelServerConfig it holds; UserError naming
    the file otherwise."""
    from google.protobuf import text_format

    config = _config_pb2().ModelServerConfig()
    try:
        # as bytes are: CRLF line ends stay CRLF when the text is edited and written back
        with open(path, encoding="utf-8", newline="") as fh:
            text = fh.read()
        text_format.Parse(text, config)
    except OSError as exc:
        raise UserError(f"cannot read the model config file {path}: "
                        f"{exc.strerror or exc}", param="config") from None
    except (text_format.ParseError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not a ModelServerConfig text file: {exc}",
                        param="config") from None
    return text, config


def parse_config_file(path: Path):
    """A ModelServerConfig from its text file; UserError naming the file otherwise."""
    return read_config_file(path)[1]


def _from_file(path: Path, polls: bool, key: str, in_place: bool = False) -> ServedConfig:
    text, config = read_config_file(path)
    return ServedConfig(config, path if polls else None, key, in_place, text)


def _flags(command: list[str]) -> dict[str, str]:
    """``--name=value`` flags of a recorded server command (last one wins)."""
    out = {}
    for arg in command:
        name = flag_name(arg)
        if name and "=" in arg:
            out[name] = arg.split("=", 1)[1]
    return out


def reload_address(record: ServerRecord) -> str:
    """Where the server takes HandleReloadConfigRequest: its gRPC port, or, when
    ``tfdeploy serve`` kept reloads local (``--model_service_port``), its UNIX socket or
    that port (the public port refuses them with PERMISSION_DENIED)."""
    flags = _flags(record.command)
    port = int(flags.get("model_service_port", 0) or 0)
    if port > 0:
        return f"{flags.get('model_service_host', '127.0.0.1')}:{port}"
    if port == -1 and flags.get("grpc_socket_path"):
        return f"unix:{flags['grpc_socket_path']}"
    return record.grpc_endpoint


def reload_tls(record: ServerRecord, address: str, tls: TlsConfig | None
               ) -> TlsConfig | None:
    """The TlsConfig for ``address`` (from ``reload_address``): ``tls`` (the user's
    ``--tls-*`` options or the record's), naming the server by its gRPC host when the
    address is another listener (the UNIX socket, the local ModelService port).  The SSL
    config puts every listener under TLS with the same certificate, which ``serve``
    checked carries that host (or ``tls_server_name``); over a UNIX socket gRPC would
    otherwise check it against ``localhost``."""
    if tls is None or tls.server_name is not None or address == record.grpc_endpoint:
        return tls
    host = record.grpc_endpoint.rsplit(":", 1)[0].strip("[]")
    return dataclasses.replace(tls, server_name=host)


def served_config(record: ServerRecord | None, config_file: str | Path | None
                  ) -> ServedConfig:
    """The config a server runs: ``config_file`` when given (the file it was started
    with, rewritten when ``poll`` says the server polls it), else what ``tfdeploy serve``
    recorded: its ``--model_config_file``, or its one model and base path."""
    if config_file is not None:
        path = Path(config_file).absolute()
        polls = True  # given explicitly: keep it in step whatever the server does
        if record is not None:
            flags = _flags(record.command)
            polls = float(flags.get("model_config_file_poll_wait_seconds", 0) or 0) > 0
        return _from_file(path, polls, str(path))
    if record is None:
        raise UserError("give the server's model config file with --config (a server "
                        "tfdeploy serve did not start: HandleReloadConfigRequest replaces "
                        "the whole config, so tfdeploy must know it)", param="config")
    flags = _flags(record.command)
    polls = float(flags.get("model_config_file_poll_wait_seconds", 0) or 0) > 0
    file = flags.get("model_config_file")
    if file:
        if record.runtime == "docker":  # the container reads the copy serve wrote
            path = state_dir() / "configs" / f"{record.name}.models.config"
            return _from_file(path, polls, f"server:{record.name}", in_place=True)
        path = Path(file)
        return _from_file(path, polls, str(path))
    config = _config_pb2().ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = record.model_name
    model.base_path = (f"/models/{record.model_name}" if record.runtime == "docker"
                       else record.base_path)
    model.model_platform = "tensorflow"
    return ServedConfig(config, None, f"server:{record.name}")


def model_entry(config, model: str):
    """The ModelConfig of ``model`` in ``config``; UserError listing the models if none."""
    for mc in config.model_config_list.config:
        if mc.name == model:
            return mc
    names = ", ".join(mc.name for mc in config.model_config_list.config) or "none"
    raise UserError(f"the server's config has no model {model!r} (it has: {names})",
                    param="model")


def reload_config(grpc_address: str, config, timeout: float = 60,
                  tls: TlsConfig | None = None) -> None:
    """HandleReloadConfigRequest (over TLS with ``tls``); the server's refusal becomes a
    UserError with its message (the config in force keeps serving then), a failed TLS
    handshake one saying what to check."""
    import grpc

    from tfdeploy.client.grpc_transport import channel as open_channel

    mm_pb2 = protos.module("tensorflow_serving.apis.model_management_pb2")
    services = protos.module("tensorflow_serving.apis.model_service_pb2_grpc")
    channel = open_channel(grpc_address, tls)
    try:
        stub = services.ModelServiceStub(channel)
        response = stub.HandleReloadConfigRequest(mm_pb2.ReloadConfigRequest(config=config),
                                                  timeout=timeout)
    except grpc.RpcError as exc:
        tls_failure = handshake_error(exc, grpc_address, tls)
        if tls_failure:
            raise UserError(tls_failure) from None
        raise UserError(f"the server at {grpc_address} refused the new config: "
                        f"{exc.code().name}: {exc.details()}") from None
    finally:
        channel.close()
    if response.status.error_code:
        raise UserError(f"the server at {grpc_address} refused the new config: "
                        f"{response.status.error_message}")


def handshake_error(exc, address: str, tls: TlsConfig | None) -> str | None:
    """The one-line message of a gRPC error that is a failed TLS handshake (the client's
    own words: which CA or name to check), None for any other error."""
    import grpc

    from tfdeploy.client.tls import grpc_handshake_error

    if exc.code() == grpc.StatusCode.UNAVAILABLE:
        return grpc_handshake_error(exc.details() or "", address, tls)
    return None


def file_text(served: ServedConfig, model: str, label: str, version: int) -> str:
    """The text to write to ``served.file`` once ``label`` of ``model`` points at
    ``version`` in ``served.config``: the file's own text with that label edited
    (``config_text.set_version_label``) when it parses to exactly ``served.config``,
    else the config printed in full (its comments and layout lost, which one warning
    line says)."""
    from google.protobuf import text_format

    if served.text is not None:
        text = config_text.set_version_label(served.text, model, label, version)
        if text is not None:
            edited = _config_pb2().ModelServerConfig()
            try:
                text_format.Parse(text, edited)
            except text_format.ParseError:
                edited = None
            if edited == served.config:
                return text
        log.warning("%s: rewritten in full to move label %s of %s, without its comments "
                    "and layout (tfdeploy's editor does not follow this file's layout)",
                    served.file, label, model)
    return text_format.MessageToString(served.config)


def write_config_in_place(path: Path, text: str) -> None:
    """Rewrite ``path`` with ``text`` keeping its inode (a file bind mounted into a
    container).  Not atomic, but safe for a poll: truncated first, the file is always a
    beginning of the new text, whose one top-level field is ``model_config_list { ... }``
    (anything after its closing brace is comments and blanks); so whatever a poll reads
    before the write ends does not parse, or holds no config at all (comments only), or
    is the whole new config, and both servers keep the config in force in the first two
    cases."""
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def write_config_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one rename: a poll reads the old file or the new
    one, never a half-written one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        with contextlib.suppress(OSError):
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# -- history -----------------------------------------------------------------------------

@contextlib.contextmanager
def _history():
    """The label history (``labels.json`` in the state dir), locked while in use; the
    caller changes the dict in place and it is written back atomically."""
    d = state_dir()
    d.mkdir(parents=True, exist_ok=True)
    path = d / "labels.json"
    with open(d / "labels.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            try:
                data = json.loads(path.read_text())
            except (FileNotFoundError, ValueError):
                data = {}
            before = json.dumps(data, sort_keys=True)
            yield data
            if json.dumps(data, sort_keys=True) != before:
                fd, tmp = tempfile.mkstemp(dir=d, prefix=".labels.", suffix=".tmp")
                with os.fdopen(fd, "w") as fh:
                    json.dump(data, fh, indent=2)
                os.replace(tmp, path)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _history_key(key: str, model: str, label: str) -> str:
    return f"{key}|{model}|{label}"


def push_previous(key: str, model: str, label: str, version: int) -> None:
    """Remember that ``label`` pointed at ``version`` before a promote."""
    with _history() as data:
        data.setdefault(_history_key(key, model, label), []).append(
            {"version": version, "at": time.time()})


def previous(key: str, model: str, label: str) -> int | None:
    with _history() as data:
        entries = data.get(_history_key(key, model, label), [])
        return entries[-1]["version"] if entries else None


def pop_previous(key: str, model: str, label: str) -> None:
    """Forget the last entry (a rollback went back to it)."""
    with _history() as data:
        entries = data.get(_history_key(key, model, label), [])
        if entries:
            entries.pop()


def move_label(served: ServedConfig, grpc_address: str, model: str, label: str,
               version: int, tls: TlsConfig | None = None) -> None:
    """Point ``label`` of ``model`` at ``version``: on the server, then in its polled
    config file (only after the server accepted it, so a refused change never reaches
    the file a later poll or restart reads), as an edit of its text (``file_text``)."""
    entry = model_entry(served.config, model)
    entry.version_labels[label] = version
    text = file_text(served, model, label, version) if served.file is not None else None
    reload_config(grpc_address, served.config, tls=tls)
    if served.file is not None:
        (write_config_in_place if served.in_place else write_config_atomic)(
            served.file, text)
