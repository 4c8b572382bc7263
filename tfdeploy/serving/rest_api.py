"""REST front end with TF Serving's URLs, JSON formats and status codes.

    GET  /v1/models/{name}[/versions/{v}|/labels/{l}]            model status
    GET  /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata   signature defs
    POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict    row or columnar
    GET  <prometheus path>                                       metrics, when enabled

Binary values travel as ``{"b64": "..."}``.  Errors are ``{"error": "..."}``.
"""

from __future__ import annotations

import json
import logging
import re
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tfdeploy.tfs import json_tensors, protos
from tfdeploy.tfs.codes import Code, StatusError
from tfdeploy.tfs.names import DEFAULT_SIGNATURE

log = logging.getLogger("tfdeploy.serving.rest")

_ROUTE = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>-?\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<verb>/metadata|:predict|:classify|:regress)?/?$")


class _Handler(BaseHTTPRequestHandler):
    server_version = "tfdeploy-model-server"
    model_server = None  # set by serve()

    def log_message(self, format, *args):  # route through logging, quietly
        log.debug("%s - %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, payload) -> None:
        self._send(status, json.dumps(payload, separators=(",", ":")).encode())

    def _error(self, exc: StatusError) -> None:
        self._json(exc.code.http, {"error": exc.message})

    def _discard(self, length: int, cap: int = 64 << 20) -> None:
        """Read (and drop) an oversized body, up to ``cap`` bytes, so the client gets our
        400 answer instead of a broken pipe."""
        remaining = min(length, cap)
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1 << 20))
            if not chunk:
                break
            remaining -= len(chunk)

    def _route(self):
        path = self.path.split("?", 1)[0]
        m = _ROUTE.match(path)
        if not m:
            raise StatusError(Code.NOT_FOUND, f"Malformed request: {self.command} {path}")
        version = int(m["version"]) if m["version"] else None
        return m["name"], version, m["label"], m["verb"] or ""

    def do_GET(self):  # noqa: N802 (http.server naming)
        ms = self.model_server
        try:
            if ms.prometheus_path and self.path.split("?", 1)[0] == ms.prometheus_path:
                from tfdeploy.serving.metrics import CONTENT_TYPE

                return self._send(200, ms.metrics.render(), CONTENT_TYPE)
            name, version, label, verb = self._route()
            if verb == "/metadata":
                proto = ms.metadata_proto(name, version, label)
                sigs = protos.module(
                    "tensorflow_serving.apis.get_model_metadata_pb2").SignatureDefMap()
                proto.metadata["signature_def"].Unpack(sigs)
                return self._json(200, {
                    "model_spec": {"name": name, "signature_name": "",
                                   "version": str(proto.model_spec.version.value)},
                    "metadata": {"signature_def": json_tensors.message_to_json(sigs)}})
            if verb:
                raise StatusError(Code.INVALID_ARGUMENT, f"use POST for {verb}")
            return self._json(200, json_tensors.message_to_json(
                ms.status_proto(name, version, label)))
        except StatusError as exc:
            self._error(exc)

    def do_POST(self):  # noqa: N802
        ms = self.model_server
        started = time.perf_counter()
        name, signature, counted = "", "", False
        try:
            name, version, label, verb = self._route()
            if verb in (":classify", ":regress"):
                raise StatusError(Code.UNIMPLEMENTED,
                                   f"{verb[1:]} is not implemented by tfdeploy-model-server")
            if verb != ":predict":
                raise StatusError(Code.NOT_FOUND, f"Malformed request: POST {self.path}")
            length = int(self.headers.get("Content-Length") or 0)
            if length > ms.options.max_request_bytes:
                self.close_connection = True
                self._discard(length)
                raise StatusError(Code.INVALID_ARGUMENT,
                                   f"request body of {length} bytes exceeds the limit of "
                                   f"{ms.options.max_request_bytes} bytes")
            raw = self.rfile.read(length)
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as exc:
                raise StatusError(Code.INVALID_ARGUMENT,
                                   f"JSON Parse error: {exc}") from None
            if not isinstance(body, dict):
                raise StatusError(Code.INVALID_ARGUMENT, "request body must be a JSON object")
            servable = ms.manager.handle(name, version, label)
            signature = body.get("signature_name") or ""
            if not isinstance(signature, str):
                raise StatusError(Code.INVALID_ARGUMENT, "signature_name must be a string")
            _, sd = servable.signature(signature)
            inputs, fmt = json_tensors.parse_predict(body, sd)
            counted = True  # from here on ModelServer.predict records the request
            _, _, outputs = ms.predict(name, servable.version, None, signature, inputs,
                                       api="rest")
            self._json(200, json_tensors.render_predict(outputs, fmt))
        except StatusError as exc:
            if not counted and name:  # rejected before it reached the model
                ms.metrics.observe(name, "", signature or DEFAULT_SIGNATURE, "rest",
                                   exc.code.name, time.perf_counter() - started)
            self._error(exc)
        except Exception as exc:  # never a dropped connection for a client
            log.exception("internal error")
            self._error(StatusError(Code.INTERNAL, f"internal error: {exc}"))


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() waits for in-flight requests (SIGTERM drain)
    block_on_close = True
    allow_reuse_address = True


def serve(model_server, host: str, port: int) -> ThreadingHTTPServer:
    import threading

    handler = type("Handler", (_Handler,), {"model_server": model_server})
    try:
        httpd = _Server((host, port), handler)
    except OSError as exc:
        raise StatusError(Code.UNAVAILABLE,
                           f"cannot bind REST port {host}:{port} ({exc.strerror})") from None
    threading.Thread(target=httpd.serve_forever, daemon=True, name="rest").start()
    return httpd
