"""REST front end with TF Serving's URLs, JSON formats and status codes.

    GET  /v1/models/{name}[/versions/{v}|/labels/{l}]            model status
    GET  /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata   signature defs
    POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict    row or columnar
    GET  <prometheus path>                                       metrics, when enabled

Binary values travel as ``{"b64": "..."}``.  Errors are ``{"error": "..."}``.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from google.protobuf import json_format

from tfdeploy.client import protos, tensors
from tfdeploy.serving.status import Code, ServingError

log = logging.getLogger("tfdeploy.serving.rest")

_ROUTE = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>-?\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<verb>/metadata|:predict|:classify|:regress)?/?$")


def _to_json(message) -> dict:
    """A response proto in TF Serving's REST JSON (field names as in the .proto, enum
    names, int64 as strings, empty fields included)."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def _decode_b64(value):
    """Replace every {"b64": "..."} in a nested JSON value with its bytes."""
    if isinstance(value, dict):
        if set(value) == {"b64"} and isinstance(value["b64"], str):
            try:
                return base64.b64decode(value["b64"], validate=True)
            except (binascii.Error, ValueError):
                raise ServingError(Code.INVALID_ARGUMENT, "invalid base64 in b64 value") from None
        raise ServingError(Code.INVALID_ARGUMENT,
                           f"unexpected JSON object {sorted(value)[:3]}; only "
                           '{"b64": ...} objects are allowed in tensor values')
    if isinstance(value, list):
        return [_decode_b64(v) for v in value]
    if isinstance(value, str):
        return value.encode("utf-8")
    return value


def _to_array(name: str, value, info) -> np.ndarray:
    want = tensors.numpy_dtype(info.dtype)
    try:
        if want.kind == "O":
            array = np.array(_decode_b64(value), dtype=object)
            if array.dtype != object or any(not isinstance(v, bytes) for v in array.flat):
                raise ValueError("expected strings or {\"b64\": ...} values")
            return array
        if isinstance(value, str) or (isinstance(value, list) and _has_str(value)):
            raise ValueError("expected numbers, got strings")
        return np.asarray(value, dtype=want)
    except ServingError:
        raise
    except (ValueError, TypeError, OverflowError) as exc:
        reason = str(exc).splitlines()[0]
        if "inhomogeneous" in reason or "sequence" in reason:
            reason = "lists of unequal length (ragged tensor)"
        raise ServingError(Code.INVALID_ARGUMENT,
                           f"input {name!r}: cannot convert to "
                           f"{tensors.dtype_name(info.dtype)}: {reason}") from None


def _has_str(value) -> bool:
    while isinstance(value, list) and value:
        value = value[0]
    return isinstance(value, str | dict)


def parse_predict(body: dict, signature_def) -> tuple[dict[str, np.ndarray], str]:
    """Row (``instances``) or columnar (``inputs``) request -> named numpy inputs."""
    if ("instances" in body) == ("inputs" in body):
        raise ServingError(Code.INVALID_ARGUMENT,
                           'request needs exactly one of "instances" (row format) or '
                           '"inputs" (columnar format)')
    names = sorted(signature_def.inputs)
    if "instances" in body:
        rows = body["instances"]
        if not isinstance(rows, list) or not rows:
            raise ServingError(Code.INVALID_ARGUMENT, '"instances" must be a non-empty list')
        if all(isinstance(r, dict) and "b64" not in r for r in rows):
            keys = set(rows[0])
            if any(set(r) != keys for r in rows):
                raise ServingError(Code.INVALID_ARGUMENT,
                                   "every instance must name the same inputs")
            columns = {k: [r[k] for r in rows] for k in keys}
        elif len(names) == 1:
            columns = {names[0]: rows}
        else:
            raise ServingError(Code.INVALID_ARGUMENT,
                               f"signature has {len(names)} inputs ({', '.join(names)}); "
                               "each instance must be an object naming them")
        return {k: _convert(k, v, signature_def) for k, v in columns.items()}, "row"
    inputs = body["inputs"]
    if not isinstance(inputs, dict) or (set(inputs) == {"b64"}):
        if len(names) != 1:
            raise ServingError(Code.INVALID_ARGUMENT,
                               f"signature has {len(names)} inputs; \"inputs\" must be an "
                               "object naming them")
        inputs = {names[0]: inputs}
    return {k: _convert(k, v, signature_def) for k, v in inputs.items()}, "columnar"


def _convert(name: str, value, signature_def) -> np.ndarray:
    if name not in signature_def.inputs:
        raise ServingError(Code.INVALID_ARGUMENT,
                           f"input {name!r} is not in the signature (inputs: "
                           f"{', '.join(sorted(signature_def.inputs))})")
    return _to_array(name, value, signature_def.inputs[name])


def _json_value(name: str, value):
    """JSON for one output value (array or, for a row of a string tensor, bytes)."""

    def enc(v: bytes):
        if not name.endswith("_bytes"):
            try:
                return v.decode("utf-8")
            except UnicodeDecodeError:
                pass
        return {"b64": base64.b64encode(v).decode("ascii")}

    if isinstance(value, bytes):
        return enc(value)
    if value.dtype.kind == "O":
        return np.frompyfunc(enc, 1, 1)(value).tolist() if value.ndim else enc(value.item())
    return value.tolist()


def render_predict(outputs: dict[str, np.ndarray], fmt: str) -> dict:
    if fmt == "columnar":
        values = {k: _json_value(k, v) for k, v in outputs.items()}
        return {"outputs": next(iter(values.values())) if len(values) == 1 else values}
    sizes = {v.shape[0] if v.ndim else None for v in outputs.values()}
    if len(sizes) != 1 or None in sizes:
        raise ServingError(Code.INVALID_ARGUMENT,
                           "outputs differ in their first dimension; use the columnar "
                           '"inputs" format for this signature')
    (n,) = sizes
    if len(outputs) == 1:
        ((k, v),) = outputs.items()
        return {"predictions": [_json_value(k, v[i]) for i in range(n)]}
    return {"predictions": [{k: _json_value(k, v[i]) for k, v in outputs.items()}
                            for i in range(n)]}


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

    def _error(self, exc: ServingError) -> None:
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
            raise ServingError(Code.NOT_FOUND, f"Malformed request: {self.command} {path}")
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
                    "metadata": {"signature_def": _to_json(sigs)}})
            if verb:
                raise ServingError(Code.INVALID_ARGUMENT, f"use POST for {verb}")
            return self._json(200, _to_json(ms.status_proto(name, version, label)))
        except ServingError as exc:
            self._error(exc)

    def do_POST(self):  # noqa: N802
        ms = self.model_server
        started = time.perf_counter()
        name, signature, counted = "", "", False
        try:
            name, version, label, verb = self._route()
            if verb in (":classify", ":regress"):
                raise ServingError(Code.UNIMPLEMENTED,
                                   f"{verb[1:]} is not implemented by tfdeploy-model-server")
            if verb != ":predict":
                raise ServingError(Code.NOT_FOUND, f"Malformed request: POST {self.path}")
            length = int(self.headers.get("Content-Length") or 0)
            if length > ms.options.max_request_bytes:
                self.close_connection = True
                self._discard(length)
                raise ServingError(Code.INVALID_ARGUMENT,
                                   f"request body of {length} bytes exceeds the limit of "
                                   f"{ms.options.max_request_bytes} bytes")
            raw = self.rfile.read(length)
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as exc:
                raise ServingError(Code.INVALID_ARGUMENT,
                                   f"JSON Parse error: {exc}") from None
            if not isinstance(body, dict):
                raise ServingError(Code.INVALID_ARGUMENT, "request body must be a JSON object")
            servable = ms.manager.handle(name, version, label)
            signature = body.get("signature_name") or ""
            if not isinstance(signature, str):
                raise ServingError(Code.INVALID_ARGUMENT, "signature_name must be a string")
            _, sd = servable.signature(signature)
            inputs, fmt = parse_predict(body, sd)
            counted = True  # from here on ModelServer.predict records the request
            _, _, outputs = ms.predict(name, servable.version, None, signature, inputs,
                                       api="rest")
            self._json(200, render_predict(outputs, fmt))
        except ServingError as exc:
            if not counted and name:  # rejected before it reached the model
                ms.metrics.observe(name, "", signature or "serving_default", "rest",
                                   exc.code.name, time.perf_counter() - started)
            self._error(exc)
        except Exception as exc:  # never a dropped connection for a client
            log.exception("internal error")
            self._error(ServingError(Code.INTERNAL, f"internal error: {exc}"))


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
        raise ServingError(Code.UNAVAILABLE,
                           f"cannot bind REST port {host}:{port} ({exc.strerror})") from None
    threading.Thread(target=httpd.serve_forever, daemon=True, name="rest").start()
    return httpd
