"""REST front end with TF Serving's URLs, JSON formats and status codes.

    GET  /v1/models/{name}[/versions/{v}|/labels/{l}]            model status
    GET  /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata   signature defs
    POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict    row or columnar
    POST /v1/models/{name}[/versions/{v}|/labels/{l}]:classify   tf.Example features
    POST /v1/models/{name}[/versions/{v}|/labels/{l}]:regress    tf.Example features
    OPTIONS /v1/...                                              CORS preflight
    GET  <prometheus path>                                       metrics, when enabled
    /v2/...                                     the Open Inference Protocol (``v2_rest``)

Binary values travel as ``{"b64": "..."}``.  Errors are ``{"error": "..."}``.  Answers
to predict, classify and regress, and errors, are the text tensorflow_model_server writes
(``tfs/json_text``: its layout, its float digits), and so are status and metadata
(``tfs/proto_json``: protobuf's printer, as TF Serving calls it).  With
--rest_api_enable_cors_support every answer of the API carries CORS headers.

Two layers: ``RestApi.handle(method, path, body)`` routes and answers a request as plain
data (status, body bytes, content type) and knows nothing of sockets; the HTTP transport
below it (``http_server``: uvicorn with a bounded worker pool, the body cap, timeouts and
a graceful drain) only reads requests and writes replies.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import threading
from dataclasses import dataclass, replace
from urllib.parse import unquote

from tfdeploy.serving import http_server
from tfdeploy.serving.path import Call, deadline_in
from tfdeploy.tfs import json_body, json_tensors, json_text, proto_json, protos
from tfdeploy.tfs.codes import INTERNAL_MESSAGE, Code, StatusError

log = logging.getLogger("tfdeploy.serving.rest")

JSON = "application/json"

# tensorflow_model_server's URL grammar (case-insensitive, whole string): anything under
# /v1/ that does not match is a malformed request (400), not an unknown resource.  The
# string matched is the request URI as sent (``uri_path`` below): its "?query" included,
# never percent-decoded, so ``/v1/models/m?x=1`` names a model "m?x=1", and
# ``/versions/%31`` is malformed.  Only the model name and the label are percent-decoded,
# after the match.  A version is ASCII digits only (its RE2 ``\d``; Python's would take
# "١" as 1), so ``/versions/-1`` is malformed even though a version directory ``-1`` is
# version -1.  The verb matches in any case but only a lower-case one is served:
# ``:PREDICT`` is malformed and ``/METADATA`` answers the model's status.
_API = re.compile(r"/v1/.*", re.IGNORECASE)
_POST = re.compile(
    r"/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[0-9]+)|/labels/(?P<label>[^/:]+))?"
    r":(?P<verb>classify|regress|predict)", re.IGNORECASE)
_GET = re.compile(
    r"/v1/models(?:/(?P<name>[^/:]+))?"
    r"(?:/versions/(?P<version>[0-9]+)|/labels/(?P<label>[^/:]+))?"
    r"(?:/(?P<verb>metadata))?", re.IGNORECASE)
# What tensorflow_model_server's HTTP server (libevent, its strict RFC 3986 URI parser)
# accepts as a request-target: path characters, "%" and two hex digits, "?" in the query
# and the fragment; after an optional scheme and "//authority".  Anything else (a `"`,
# "{", "|", a lone "%", a second "#") is answered 400 before any URL is matched.
_HEX = "%[0-9A-Fa-f]{2}"
_SUB = r"A-Za-z0-9\-._~!$&'()*+,;="  # unreserved and sub-delims
_RELATIVE = re.compile(rf"(?:[{_SUB}:@/]|{_HEX})*(?:\?(?:[{_SUB}:@/?]|{_HEX})*)?"
                       rf"(?:#(?:[{_SUB}:@/?]|{_HEX})*)?")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*:")
_AUTHORITY = re.compile(r"//(?P<authority>[^/?#]*)")
_HOST_PORT = re.compile(rf"(?:(?:[{_SUB}:]|{_HEX})*@)?"
                        rf"(?P<host>\[[^\]]*\]|(?:[{_SUB}]|{_HEX})*)(?::(?P<port>[0-9]*))?")
_IP_FUTURE = re.compile(rf"v[0-9A-Fa-f]+\.[{_SUB}:]+")
_INT64_MAX = (1 << 63) - 1

#: What tensorflow_model_server adds to every answer of its API (/v1/..., errors and
#: preflights included, not the metrics path) with --rest_api_enable_cors_support: any
#: origin, the two methods it serves, the one request header a JSON POST needs.
CORS_HEADERS = (("Access-Control-Allow-Origin", "*"),
                ("Access-Control-Allow-Methods", "POST, GET"),
                ("Access-Control-Allow-Headers", "Content-Type"))
#: Ours, for /v2 with the same flag: the binary-tensor extension's header may be sent
#: and read by a page too.
V2_CORS_HEADERS = (*CORS_HEADERS[:2],
                   ("Access-Control-Allow-Headers",
                    "Content-Type, Inference-Header-Content-Length"),
                   ("Access-Control-Expose-Headers", "Inference-Header-Content-Length"))
#: The Content-Type tensorflow_model_server's HTTP server (libevent) gives an answer
#: that has none: a preflight's empty one.
PREFLIGHT_CONTENT_TYPE = "text/html; charset=ISO-8859-1"
_HTTP_ORIGIN = re.compile("https?://")


def uri_path(target: str) -> str | None:
    """What tensorflow_model_server matches its URLs against for a request-target: the
    path, "?query" and "#fragment" as sent (an absolute-form target loses its scheme and
    authority), not percent-decoded; None when its HTTP server refuses the target as no
    URI (answered 400 before anything else)."""
    rest = target
    scheme = _SCHEME.match(rest)
    if scheme:
        rest = rest[scheme.end():]
    authority = _AUTHORITY.match(rest)
    if authority:
        rest = rest[authority.end():]
        parts = _HOST_PORT.fullmatch(authority["authority"])
        if parts is None or (parts["port"] and int(parts["port"]) > 65535):
            return None
        host = parts["host"]
        if host.startswith("["):
            try:
                ipaddress.IPv6Address(host[1:-1])
            except ValueError:
                if not _IP_FUTURE.fullmatch(host[1:-1]):
                    return None
    elif not scheme and ":" in re.split("[/?#]", rest, maxsplit=1)[0]:
        return None  # a first segment with ":" would be a scheme
    return rest if _RELATIVE.fullmatch(rest) else None


def _bare(uri: str | None) -> str | None:
    """The path of a ``uri_path``: as sent, without its "?query" and "#fragment"."""
    return None if uri is None else re.split("[?#]", uri, maxsplit=1)[0]


def _is_v2(bare: str | None) -> bool:
    return bare is not None and (bare == "/v2" or bare.startswith("/v2/"))


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = ()


def preflight(headers) -> Reply:
    """An OPTIONS request to the API, as tensorflow_model_server answers it whether CORS
    is on or not (it never reaches the API's handler): 200 when the Origin header has
    "http://" or "https://" in it, else 400 (FAILED_PRECONDITION); both with an empty
    body (the 400's message, "Origin header is missing in CORS preflight", only goes to
    its log, as here)."""
    if _HTTP_ORIGIN.search((headers or {}).get("origin", "")):
        return Reply(200, b"", PREFLIGHT_CONTENT_TYPE)
    log.debug("Origin header is missing in CORS preflight")
    return Reply(400, b"", PREFLIGHT_CONTENT_TYPE)


def json_reply(status: int, payload) -> Reply:
    return Reply(status, json.dumps(payload, separators=(",", ":")).encode())


def text_reply(status: int, text: str) -> Reply:
    return Reply(status, text.encode("utf-8"))


def error_reply(exc: StatusError) -> Reply:
    """A v1 API error, in tensorflow_model_server's text (tfs/json_text.py)."""
    return text_reply(exc.code.http, json_text.error_text(exc.message))


def v2_error_reply(exc: StatusError) -> Reply:
    """An Open Inference Protocol error: ``{"error": "..."}``, compact as KServe and
    Triton write it."""
    return json_reply(exc.code.http, {"error": exc.message})


@dataclass(frozen=True)
class Target:
    """What a /v1/models URL names."""

    name: str
    version: int | None
    label: str | None
    verb: str  # "predict", "classify", "regress", "metadata" or "" (status)


def decode_name(raw: str) -> str:
    """A model name or label of a URL, percent-decoded once.  tensorflow_model_server
    keeps bytes that are not UTF-8 as they are and writes them raw into its JSON error
    (which is then no valid UTF-8); here such a byte stays in the name as a lone
    surrogate (Python's "surrogateescape"), so the JSON answer carries it as an ASCII
    escape (``%FF`` -> ``\\udcff``) from which a client can get the byte back, where
    U+FFFD would lose it.  No configured name can hold one, so it names no model."""
    return unquote(raw, errors="surrogateescape")


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
    name = decode_name(m["name"] or "")
    if not name:
        raise StatusError(Code.INVALID_ARGUMENT, "Missing model name in request.")
    label = decode_name(m["label"]) if m["label"] else None
    # Served verbs are lower-case only (tensorflow_model_server compares them as such):
    # another spelling is malformed for POST and the model status for GET.
    verb = m["verb"] or ""
    if method == "POST" and verb not in ("classify", "regress", "predict"):
        raise StatusError(Code.INVALID_ARGUMENT, f"Malformed request: {method} {path}")
    if method == "GET" and verb != "metadata":
        verb = ""
    return Target(name, version, label, verb)


class RestApi:
    """The REST API of one ModelServer, transport-free."""

    def __init__(self, model_server):
        self.ms = model_server

    def handle(self, method: str, path: str, body: bytes = b"",
               received: float | None = None, headers=None,
               cancelled: threading.Event | None = None, target: str | None = None) -> Reply:
        """Answer one request; never raises (every failure is an error reply).
        ``path`` is percent-decoded without the query; ``target`` the request-target as
        sent (what TF Serving's URLs and /v2's match, see ``uri_path``; ``path`` when not
        given).  ``received`` (time.monotonic()) starts the
        --rest_api_timeout_in_ms clock of an inference request (now by default);
        ``cancelled`` is set by the transport when the client goes away, so an inference
        request still queued leaves the queue without running (as a cancelled gRPC call
        does)."""
        cancelled = cancelled or threading.Event()
        ms = self.ms
        target = path if target is None else target
        uri = uri_path(target)
        bare = _bare(uri)
        if bare is not None and ms.prometheus_path:
            # tensorflow_model_server looks the metrics path up as sent, any method, and
            # then wants no query: 400 in plain text
            if bare == ms.prometheus_path:
                from tfdeploy.serving.metrics import CONTENT_TYPE

                if uri != bare:
                    return Reply(400, f"Unexpected path: {uri}. Should be {bare}".encode(),
                                 "text/plain")
                return Reply(200, ms.metrics.render(), CONTENT_TYPE)
        if _is_v2(bare):  # ours: matched on the path as sent, without query and fragment
            reply = (preflight(headers) if method == "OPTIONS" else
                     self._v2(method, bare, headers or {}, body, received, cancelled))
            return self._with_cors(reply, V2_CORS_HEADERS)
        if uri is None:
            return error_reply(StatusError(Code.INVALID_ARGUMENT,
                                           f"Malformed request URI: {target}"))
        if not _API.fullmatch(uri):
            return error_reply(StatusError(Code.NOT_FOUND, f"Not found: {method} {uri}"))
        reply = (preflight(headers) if method == "OPTIONS" else
                 self._v1(method, uri, body, received, cancelled))
        return self._with_cors(reply, CORS_HEADERS)

    def cors_headers(self, path: str, target: str) -> tuple[tuple[str, str], ...]:
        """The CORS headers ``handle`` adds to an answer to this request (none without
        --rest_api_enable_cors_support, or outside the APIs): for the HTTP layer's own
        answers (413, 503, ...), so a page can read those too."""
        if not self.ms.options.rest_api_enable_cors_support:
            return ()
        uri = uri_path(target or path)
        if _is_v2(_bare(uri)):
            return V2_CORS_HEADERS
        return CORS_HEADERS if uri is not None and _API.fullmatch(uri) else ()

    def _with_cors(self, reply: Reply, headers: tuple[tuple[str, str], ...]) -> Reply:
        if not self.ms.options.rest_api_enable_cors_support:
            return reply
        return replace(reply, headers=reply.headers + headers)

    def _v1(self, method: str, uri: str, body: bytes, received: float | None,
            cancelled: threading.Event) -> Reply:
        try:
            named = parse_path(method, uri)
            if method == "POST":
                return text_reply(200, self._post(named, body, received, cancelled))
            return text_reply(200, self._get(named))
        except StatusError as exc:
            return error_reply(exc)
        except Exception:  # never a dropped connection for a client
            log.exception("internal error")
            return error_reply(StatusError(Code.INTERNAL, INTERNAL_MESSAGE))

    def _v2(self, method: str, path: str, headers, body: bytes,
            received: float | None, cancelled: threading.Event) -> Reply:
        from tfdeploy.serving.v2_rest import V2RestApi

        try:
            status, payload, extra = V2RestApi(self.ms).handle(method, path, headers, body,
                                                               received, cancelled)
        except StatusError as exc:
            return v2_error_reply(exc)
        except Exception as exc:  # never a dropped connection for a client
            log.exception("internal error")
            return v2_error_reply(StatusError(Code.INTERNAL, f"internal error: {exc}"))
        content_type = "application/octet-stream" if extra else JSON
        return Reply(status, payload, content_type, tuple(extra.items()))

    def _get(self, t: Target) -> str:
        """Status or metadata, in the text tensorflow_model_server writes
        (``tfs/proto_json``)."""
        if t.verb == "metadata":
            proto = self.ms.metadata_proto(t.name, t.version, t.label)
            sigs = protos.module(
                "tensorflow_serving.apis.get_model_metadata_pb2").SignatureDefMap()
            proto.metadata["signature_def"].Unpack(sigs)
            return proto_json.metadata_text(proto.model_spec, sigs)
        return proto_json.message_text(self.ms.status_proto(t.name, t.version, t.label))

    def _call(self, t: Target, received: float | None, cancelled: threading.Event) -> Call:
        timeout = self.ms.options.rest_api_timeout_in_ms
        return Call(t.verb if t.verb in ("classify", "regress") else "predict", "rest",
                    t.name, t.version, t.label,
                    deadline=deadline_in(timeout / 1000 if timeout > 0 else None, received),
                    cancelled=cancelled)

    def _post(self, t: Target, raw: bytes, received: float | None,
              cancelled: threading.Event) -> str:
        if t.verb in ("classify", "regress"):
            return self._classify_or_regress(t, raw, received, cancelled)
        parsed: dict = {}

        def prepare() -> str:
            parsed["body"] = body = parse_body(raw)
            signature = body.get("signature_name") or ""
            if not isinstance(signature, str):
                raise StatusError(Code.INVALID_ARGUMENT, "signature_name must be a string")
            parsed["signature"] = signature
            return signature

        def decode(signature_def) -> dict:
            if not signature_def.inputs:
                # tensorflow_model_server's REST API cannot address a signature without
                # inputs (its gRPC API runs one with an empty request)
                raise StatusError(Code.INVALID_ARGUMENT, "Failed to get input map for "
                                  f"signature: {parsed.get('signature') or 'DEFAULT'}")
            inputs, parsed["format"] = json_tensors.parse_predict(parsed.pop("body"),
                                                                  signature_def)
            return inputs

        _, _, outputs = self.ms.path.predict(self._call(t, received, cancelled), decode,
                                             prepare=prepare)
        return json_text.predict_text(outputs, parsed["format"])

    def _classify_or_regress(self, t: Target, raw: bytes, received: float | None,
                             cancelled: threading.Event) -> str:
        module = "classification_pb2" if t.verb == "classify" else "regression_pb2"
        pb2 = protos.module(f"tensorflow_serving.apis.{module}")
        request = (pb2.ClassificationRequest() if t.verb == "classify"
                   else pb2.RegressionRequest())

        def prepare() -> None:
            json_tensors.fill_example_request(parse_body(raw, arrays=False), request)
            request.model_spec.name = t.name

        response = self.ms.path.infer(self._call(t, received, cancelled), request,
                                      prepare=prepare)
        if t.verb == "classify":
            return json_text.classification_text(response.result)
        return json_text.regression_text(response.result)


def parse_body(raw: bytes, arrays: bool = True) -> dict:
    """The JSON object of a request body, or INVALID_ARGUMENT naming what is wrong.  Big
    numeric arrays come back as numpy arrays (unless ``arrays`` is False), without a
    Python object per number (a 100 MB body costs about its own size, not gigabytes);
    nesting is capped."""
    try:
        body = json_body.parse_body(raw, arrays=arrays)
    except json_body.BodyError as exc:
        raise StatusError(Code.INVALID_ARGUMENT, str(exc)) from None
    if not isinstance(body, dict):
        shown = json.dumps(body.tolist() if hasattr(body, "tolist") else body)[:200]
        raise StatusError(Code.INVALID_ARGUMENT, f"JSON Value: {shown} Is not object")
    return body


# -- the HTTP transport ------------------------------------------------------------------
#: Worker threads of their own for status, metadata and metrics GETs, so they answer
#: while every inference thread is taken.
CONTROL_THREADS = 8
#: Inference threads beyond the slots and the queue (see grpc_api.SPARE_THREADS).
SPARE_THREADS = 8


def _tls(path: str) -> http_server.TlsFiles | None:
    """--ssl_config_file covers REST too (ours: tensorflow_model_server's REST is plain
    HTTP whatever the flag says): the same key, certificate and client verification as
    gRPC."""
    if not path:
        return None
    from tfdeploy.serving.config import ssl_config

    config = ssl_config(path)  # server_key and server_cert checked there
    return http_server.TlsFiles(config.server_key, config.server_cert, config.custom_ca,
                                config.client_verify)


def serve(model_server, host: str, port: int) -> http_server.HttpServerHandle:
    """Serve the REST API on host:port (``http_server``: uvicorn, a bounded worker pool,
    the body cap, timeouts and a graceful drain); returns the handle to ``stop(grace)``.

    Requests with a body (predictions) are admitted by the HTTP layer up to the REST
    slots plus ``--max_queued_requests`` at once, before their body is read: beyond that
    503 UNAVAILABLE, so bodies buffered at once are bounded.  GETs (status, metadata,
    metrics) run on threads of their own."""
    api = RestApi(model_server)
    options = model_server.options

    def handler(request: http_server.HttpRequest) -> http_server.HttpResponse:
        reply = api.handle(request.method, request.path, request.body, request.received,
                           request.headers, request.cancelled, request.target)
        return http_server.HttpResponse(reply.status, reply.body, reply.content_type,
                                        reply.headers)

    in_flight = model_server.rest_slots + options.max_queued_requests
    try:
        return http_server.serve(
            handler, host, port, max_body_bytes=options.max_request_bytes,
            num_threads=in_flight + SPARE_THREADS, control_threads=CONTROL_THREADS,
            max_in_flight=in_flight,
            busy_message=(f"{in_flight} REST inference requests already in flight "
                          "(--rest_api_num_threads + --max_queued_requests); retry later"),
            tls=_tls(options.ssl_config_file),
            layer_headers=api.cors_headers)
    except OSError as exc:
        raise StatusError(Code.UNAVAILABLE,
                          f"cannot bind REST port {host}:{port} "
                          f"({exc.strerror or exc})") from None
