"""REST front end with TF Serving's URLs, JSON formats and status codes.

    GET  /v1/models/{name}[/versions/{v}|/labels/{l}]            model status
    GET  /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata   signature defs
    POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict    row or columnar
    POST /v1/models/{name}[/versions/{v}|/labels/{l}]:classify   tf.Example features
    POST /v1/models/{name}[/versions/{v}|/labels/{l}]:regress    tf.Example features
    GET  <prometheus path>                                       metrics, when enabled

Binary values travel as ``{"b64": "..."}``.  Errors are ``{"error": "..."}``.

Two layers: ``RestApi.handle(method, path, body)`` routes and answers a request as plain
data (status, body bytes, content type) and knows nothing of sockets; the HTTP transport
below it (``http.server`` today) only reads requests and writes replies, so it can be
replaced without touching the API's behaviour.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

from tfdeploy.tfs import json_tensors, protos
from tfdeploy.tfs.codes import Code, StatusError
from tfdeploy.tfs.names import DEFAULT_SIGNATURE

log = logging.getLogger("tfdeploy.serving.rest")

JSON = "application/json"

# tensorflow_model_server's URL grammar (case-insensitive, whole path): anything under
# /v1/ that does not match is a malformed request (400), not an unknown resource.
_API = re.compile(r"/v1/.*", re.IGNORECASE)
_POST = re.compile(
    r"/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r":(?P<verb>classify|regress|predict)", re.IGNORECASE)
_GET = re.compile(
    r"/v1/models(?:/(?P<name>[^/:]+))?(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?:/(?P<verb>metadata))?", re.IGNORECASE)
_INT64_MAX = (1 << 63) - 1


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str = JSON


def json_reply(status: int, payload) -> Reply:
    return Reply(status, json.dumps(payload, separators=(",", ":")).encode())


def error_reply(exc: StatusError) -> Reply:
    return json_reply(exc.code.http, {"error": exc.message})


@dataclass(frozen=True)
class Target:
    """What a /v1/models URL names."""

    name: str
    version: int | None
    label: str | None
    verb: str  # "predict", "classify", "regress", "metadata" or "" (status)


def parse_path(method: str, path: str) -> Target:
    """The model, version or label and verb of an API path; INVALID_ARGUMENT (400) with
    tensorflow_model_server's message when it does not parse."""
    grammar = {"POST": _POST, "GET": _GET}.get(method)
    m = grammar.fullmatch(path) if grammar else None
    if m is None:
        raise StatusError(Code.INVALID_ARGUMENT, f"Malformed request: {method} {path}")
    version = None
    if m["version"] is not None:
        version = int(m["version"])
        if version > _INT64_MAX:
            raise StatusError(Code.INVALID_ARGUMENT,
                              f"Failed to convert version: {m['version']} to numeric.")
    name = unquote(m["name"] or "")
    if not name:
        raise StatusError(Code.INVALID_ARGUMENT, "Missing model name in request.")
    label = unquote(m["label"]) if m["label"] else None
    return Target(name, version, label, (m["verb"] or "").lower())


class RestApi:
    """The REST API of one ModelServer, transport-free."""

    def __init__(self, model_server):
        self.ms = model_server
        # --rest_api_num_threads: requests processed at once (0: four per core, as the
        # official server); the others wait their turn, connections stay open
        threads = model_server.options.rest_api_num_threads or 4 * (os.cpu_count() or 1)
        self.slots = threading.BoundedSemaphore(threads)

    def handle(self, method: str, path: str, body: bytes = b"") -> Reply:
        """Answer one request; never raises (every failure is an error reply)."""
        path = path.split("?", 1)[0]
        ms = self.ms
        if method == "GET" and ms.prometheus_path and path == ms.prometheus_path:
            from tfdeploy.serving.metrics import CONTENT_TYPE

            return Reply(200, ms.metrics.render(), CONTENT_TYPE)
        if not _API.fullmatch(path):
            return error_reply(StatusError(Code.NOT_FOUND, f"Not found: {method} {path}"))
        try:
            target = parse_path(method, path)
            if method == "POST":
                return json_reply(200, self._post(target, body))
            return json_reply(200, self._get(target))
        except StatusError as exc:
            return error_reply(exc)
        except Exception as exc:  # never a dropped connection for a client
            log.exception("internal error")
            return error_reply(StatusError(Code.INTERNAL, f"internal error: {exc}"))

    def _get(self, t: Target) -> dict:
        if t.verb == "metadata":
            proto = self.ms.metadata_proto(t.name, t.version, t.label)
            sigs = protos.module(
                "tensorflow_serving.apis.get_model_metadata_pb2").SignatureDefMap()
            proto.metadata["signature_def"].Unpack(sigs)
            return {"model_spec": {"name": t.name, "signature_name": "",
                                   "version": str(proto.model_spec.version.value)},
                    "metadata": {"signature_def": json_tensors.message_to_json(sigs)}}
        return json_tensors.message_to_json(self.ms.status_proto(t.name, t.version, t.label))

    def _post(self, t: Target, raw: bytes) -> dict:
        if t.verb in ("classify", "regress"):
            return self._classify_or_regress(t, raw)
        started = time.perf_counter()
        signature = ""
        try:
            body = parse_body(raw)
            signature = body.get("signature_name") or ""
            if not isinstance(signature, str):
                raise StatusError(Code.INVALID_ARGUMENT, "signature_name must be a string")
            # Resolved once: the request runs on the servable it parsed its inputs against,
            # even if a newer version becomes AVAILABLE (or this one unloads) meanwhile.
            servable = self.ms.manager.handle(t.name, t.version, t.label)
            _, sd = servable.signature(signature)
            inputs, fmt = json_tensors.parse_predict(body, sd)
        except StatusError as exc:
            self._rejected(t.name, signature, exc, started)
            raise
        _, outputs = self.ms.run(servable, signature, inputs, api="rest",
                                 timeout_ms=self.ms.options.rest_api_timeout_in_ms)
        return json_tensors.render_predict(outputs, fmt)

    def _classify_or_regress(self, t: Target, raw: bytes) -> dict:
        module = "classification_pb2" if t.verb == "classify" else "regression_pb2"
        pb2 = protos.module(f"tensorflow_serving.apis.{module}")
        request = (pb2.ClassificationRequest() if t.verb == "classify"
                   else pb2.RegressionRequest())
        started = time.perf_counter()
        try:
            json_tensors.fill_example_request(parse_body(raw), request)
        except StatusError as exc:
            self._rejected(t.name, request.model_spec.signature_name, exc, started)
            raise
        request.model_spec.name = t.name
        response = self.ms.infer(t.verb, t.name, t.version, t.label, request, api="rest",
                                 timeout_ms=self.ms.options.rest_api_timeout_in_ms)
        if t.verb == "classify":
            return json_tensors.render_classification(response.result)
        return json_tensors.render_regression(response.result)

    def _rejected(self, name: str, signature: str, exc: StatusError, started: float) -> None:
        """Count a request refused before it reached a model (ModelServer.run counts the
        others)."""
        self.ms.metrics.observe(name, "", signature or DEFAULT_SIGNATURE, "rest",
                                exc.code.name, time.perf_counter() - started)

    def too_large(self, method: str, path: str, length: int) -> Reply:
        """The reply to a body over --max_request_bytes (the transport does not read it)."""
        exc = StatusError(Code.INVALID_ARGUMENT,
                          f"request body of {length} bytes exceeds the limit of "
                          f"{self.ms.options.max_request_bytes} bytes")
        try:
            self._rejected(parse_path(method, path.split("?", 1)[0]).name, "", exc,
                           time.perf_counter())
        except StatusError:
            pass  # not a model URL: nothing to count
        return error_reply(exc)


def parse_body(raw: bytes) -> dict:
    """The JSON object of a request body, or INVALID_ARGUMENT naming what is wrong."""
    if not raw:
        raise StatusError(Code.INVALID_ARGUMENT, "JSON Parse error: The document is empty")
    try:
        body = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise StatusError(Code.INVALID_ARGUMENT,
                          f"JSON Parse error: {exc.msg} at offset: {exc.pos}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise StatusError(Code.INVALID_ARGUMENT, f"JSON Parse error: {exc}") from None
    if not isinstance(body, dict):
        raise StatusError(Code.INVALID_ARGUMENT,
                          f"JSON Value: {json.dumps(body)[:200]} Is not object")
    return body


# -- the HTTP transport ------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    server_version = "tfdeploy-model-server"
    api: RestApi = None  # set by serve()

    def log_message(self, format, *args):  # route through logging, quietly
        log.debug("%s - %s", self.address_string(), format % args)

    def _send(self, reply: Reply) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)

    def _discard(self, length: int, cap: int = 64 << 20) -> None:
        """Read (and drop) an oversized body, up to ``cap`` bytes, so the client gets our
        400 answer instead of a broken pipe."""
        remaining = min(length, cap)
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1 << 20))
            if not chunk:
                break
            remaining -= len(chunk)

    def _request(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            return self._send(error_reply(StatusError(Code.INVALID_ARGUMENT,
                                                      "invalid Content-Length")))
        if length > self.api.ms.options.max_request_bytes:
            self.close_connection = True
            self._discard(length)
            return self._send(self.api.too_large(self.command, self.path, length))
        body = self.rfile.read(length) if length > 0 else b""
        if self.command == "GET":  # status, metadata, metrics: never behind predictions
            return self._send(self.api.handle(self.command, self.path, body))
        with self.api.slots:
            reply = self.api.handle(self.command, self.path, body)
        self._send(reply)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _request  # noqa: N815


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() waits for in-flight requests (SIGTERM drain)
    block_on_close = True
    allow_reuse_address = True


def serve(model_server, host: str, port: int) -> ThreadingHTTPServer:
    handler = type("Handler", (_Handler,), {"api": RestApi(model_server)})
    try:
        httpd = _Server((host, port), handler)
    except OSError as exc:
        raise StatusError(Code.UNAVAILABLE,
                          f"cannot bind REST port {host}:{port} ({exc.strerror})") from None
    threading.Thread(target=httpd.serve_forever, daemon=True, name="rest").start()
    return httpd
