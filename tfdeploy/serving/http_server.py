"""The REST front end's HTTP layer: uvicorn's event loop and httptools (llhttp) parser
in front of a bounded pool of worker threads that run a blocking handler.

Why not ``http.server`` (issue 12): its listen backlog of 5 reset 4.5-27% of requests at
64 concurrent clients, a thread per connection with no timeout let 300 half-open
connections hold 300 threads, one idle keep-alive connection blocked shutdown for good,
``Content-Length: -1`` hung, ``abc`` gave 500 and ``Expect: 100-continue`` was never
answered.  Why uvicorn: see ``bench/http_layer.py`` (throughput at 1 and 64 clients, RSS and
time to stop, for every candidate) and the README's "The embedded model server".

What this layer guarantees, whatever the handler does:

- connections are read by one event loop; handlers run on ``num_threads`` threads, so a
  slow handler never holds up other connections' reads or the accept loop;
- a listen backlog of ``backlog``; keep-alive; ``Expect: 100-continue`` answered when
  the body is wanted (and a 413 instead when the declared length is over the cap);
- timeouts: request headers must be complete ``header_timeout`` s after their first byte
  (or after the connection is made), the body may not stall for ``body_timeout`` s, an
  idle keep-alive connection is closed after ``idle_timeout`` s;
- a body over ``max_body_bytes`` is answered 413 naming the limit without being kept in
  memory (the rest of it is read and dropped, so the client sees the answer, not a reset);
- a malformed request (request line, header, ``Content-Length``, chunk) is answered 400,
  never 500 and never a hang; headers over ``max_header_bytes`` too;
- the layer's own errors (400, 408, 413, 500, 504) are JSON ``{"error": "..."}``, as TF
  Serving's REST API answers;
- a client that goes away (close, reset, EOF) while its request is handled sets the
  request's ``cancelled`` event, so a handler still waiting (for an inference slot) can
  leave instead of running for nobody;
- ``stop(grace)`` stops accepting, closes idle connections at once and lets in-flight
  requests finish for up to ``grace`` s.

TensorFlow-free: the handler brings the model.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from tfdeploy.tfs.codes import INTERNAL_MESSAGE

log = logging.getLogger("tfdeploy.serving.http")

SERVER_NAME = b"tfdeploy-model-server"


@dataclass
class HttpRequest:
    """One request, its body read in full.  Header names are lower-case (HTTP header
    names are case-insensitive); repeated headers are joined with ", "."""

    method: str
    path: str  # percent-decoded, without the query
    query: str
    headers: Mapping[str, str]
    body: bytes
    received: float = field(default_factory=time.monotonic)  # when its headers arrived
    #: Set once the client has gone (closed or reset its connection) before its answer:
    #: a handler still waiting for a slot can give up instead of running for nobody.
    cancelled: threading.Event = field(default_factory=threading.Event)
    #: The request-target exactly as on the request line (bytes as latin-1): not
    #: percent-decoded, with its "?query" and "#fragment", for handlers that must match
    #: URLs as another server does (TF Serving's REST API does not decode).
    target: str = ""


@dataclass
class HttpResponse:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()  # more headers (v2's binary extension)


Handler = Callable[[HttpRequest], HttpResponse]
#: More headers for the layer's own answers to a request (413, 503, 408, 500, 504), from
#: its decoded path and its request-target as sent (the REST API's CORS headers).
LayerHeaders = Callable[[str, str], tuple[tuple[str, str], ...]]


def error_body(message: str) -> bytes:
    """TF Serving's REST error format."""
    return json.dumps({"error": message}, separators=(",", ":")).encode()


@dataclass(frozen=True)
class _Limits:
    max_body_bytes: int
    max_header_bytes: int
    header_timeout: float
    body_timeout: float
    timeout_seconds: float | None


class _Protocol(HttpToolsProtocol):
    """uvicorn's httptools protocol (its ``http=`` option takes a protocol class) plus what
    it lacks: a header timeout (uvicorn has none: a connection that sends nothing, or half
    a header, would stay open for ever), a stall timeout while an answered body is dropped,
    a cap on header bytes (llhttp has none) and JSON 400 answers."""

    limits: _Limits  # set on the per-server subclass made by serve()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._timer: asyncio.TimerHandle | None = None
        self._in_message = False
        self._headers_done = False
        self._header_bytes = 0
        self._reject: str | None = None
        self._arm(self.limits.header_timeout, "headers")  # nothing sent yet

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    # -- timers ---------------------------------------------------------------------------
    def _arm(self, seconds: float, phase: str) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._expired, phase)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self, phase: str) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if phase == "headers" and self._in_message:  # half a request: say why we hang up
            self._write_error(408, f"request headers not complete within "
                                   f"{self.limits.header_timeout:g} s")
        self.transport.close()

    # -- parser callbacks -----------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        # uvicorn's own, but keeping llhttp's reason for the 400 answer.
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # no WebSocket here: served as a plain request
            pass
        except httptools.HttpParserError as exc:
            self.send_400_response(self._reject or f"malformed HTTP request: {exc}")
            return
        # The body of a request already answered (413) is being read and dropped: it may
        # not stall.  uvicorn's keep-alive timer was cancelled by this data.
        if (self._in_message and self._headers_done and self.cycle is not None
                and self.cycle.response_complete and not self.transport.is_closing()):
            self._arm(self.limits.body_timeout, "body")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_message = True
        self._headers_done = False
        self._header_bytes = 0
        self._arm(self.limits.header_timeout, "headers")

    def _count(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > self.limits.max_header_bytes:
            self._reject = (f"request line and headers exceed the limit of "
                            f"{self.limits.max_header_bytes} bytes")
            raise ValueError(self._reject)  # llhttp stops; data_received answers 400

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm()
        self._headers_done = True
        # uvicorn's scope has the path decoded and the query apart, the fragment gone:
        # the target as sent goes along too (HttpRequest.target).
        target = bytes(self.url).decode("latin-1")  # str, decoded once for every reader
        self.scope["tfdeploy.target"] = target  # type: ignore[typeddict-unknown-key]
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_message = False
        self._disarm()
        if self.cycle is not None and self.cycle.response_complete:
            # The end of a body dropped after its answer: uvicorn armed its keep-alive
            # timer at the answer and the body's data cancelled it; the idle clock starts now.
            self._arm(self.timeout_keep_alive, "idle")
        super().on_message_complete()

    # -- answers of the layer itself --------------------------------------------------------
    def _write_error(self, status: int, message: str) -> None:
        body = error_body(message)
        phrase = {400: b"Bad Request", 408: b"Request Timeout"}.get(status, b"Error")
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nserver: %s\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s"
            % (status, phrase, SERVER_NAME, len(body), body))

    def send_400_response(self, msg: str) -> None:
        """A request llhttp cannot parse (request line, header, Content-Length, chunk):
        400 with the reason, then close (the stream cannot be resynchronised)."""
        self._disarm()
        if not self.transport.is_closing():
            self._write_error(400, msg)
            self.transport.close()


class HttpServerHandle:
    """A running server: ``port`` (the bound one, so port 0 works) and ``stop(grace)``."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread,
                 pools: list[ThreadPoolExecutor], port: int):
        self._server = server
        self._thread = thread
        self._pools = pools
        self.port = port

    def stop(self, grace: float) -> None:
        """Stop accepting, close idle (keep-alive, half-sent) connections at once, let
        in-flight requests finish for up to ``grace`` s, then cancel what is left.  A
        handler still running on a worker thread then is abandoned (threads cannot be
        killed); its answer is dropped."""
        self._server.config.timeout_graceful_shutdown = max(grace, 0.0)  # type: ignore[assignment]
        self._server.should_exit = True
        self._thread.join(grace + 5.0)
        for pool in self._pools:
            pool.shutdown(wait=False, cancel_futures=True)


def _headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in raw:
        key, text = name.decode("latin-1").lower(), value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return headers


def _app(handler: Handler, pool: ThreadPoolExecutor, limits: _Limits,
         control_pool: ThreadPoolExecutor | None = None, max_in_flight: int | None = None,
         busy_message: str = "server busy; retry later",
         layer_headers: LayerHeaders | None = None):
    """The ASGI application between uvicorn and the blocking handler."""
    in_flight = 0  # requests with a body being read or handled (event loop only)

    async def respond(send, status: int, body: bytes, content_type: str = "application/json",
                      close: bool = False, extra: tuple[tuple[str, str], ...] = ()) -> None:
        headers = [(b"content-type", content_type.encode("latin-1")),
                   (b"content-length", str(len(body)).encode())]
        headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in extra]
        if close:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def too_large(size: str) -> bytes:
        return error_body(f"request body of {size} exceeds the limit of "
                          f"{limits.max_body_bytes} bytes")

    async def refuse(headers: Mapping[str, str], receive, send, status: int,
                     body: bytes, extra: tuple[tuple[str, str], ...]) -> None:
        """Answer before the body is read, without ever keeping the body."""
        if "100-continue" in headers.get("expect", "").lower():
            # Before any receive(): no "100 Continue" goes out, so the client never
            # sends the body, and we close.
            await respond(send, status, body, close=True, extra=extra)
            return
        if "close" not in headers.get("connection", "").lower():
            # Keep-alive: answer now; the protocol reads and drops the body that
            # follows (see _Protocol.data_received), so the connection lives on.
            await respond(send, status, body, extra=extra)
            return
        # "Connection: close" (urllib does this): the answer would close the socket
        # under a client still sending, which then sees a reset instead of the answer.
        # Read and drop the body first (never keeping it), then answer.
        more = True
        while more:
            try:
                message = await asyncio.wait_for(receive(), limits.body_timeout)
            except asyncio.TimeoutError:
                break
            if message["type"] == "http.disconnect":
                return
            more = message.get("more_body", False)
        await respond(send, status, body, close=True, extra=extra)

    async def app(scope: dict[str, Any], receive, send) -> None:
        nonlocal in_flight
        if scope["type"] != "http":
            return
        received = time.monotonic()
        headers = _headers(scope["headers"])
        extra = layer_headers(scope["path"], scope.get("tfdeploy.target", "")) \
            if layer_headers is not None else ()
        declared = headers.get("content-length")
        if declared is not None and int(declared) > limits.max_body_bytes:
            await refuse(headers, receive, send, 413, too_large(f"{declared} bytes"), extra)
            return
        has_body = (declared is not None and int(declared) > 0) or \
            "transfer-encoding" in headers
        if not has_body and control_pool is not None:
            # status, metadata, metrics: threads of their own, never behind inference
            await run(scope, headers, b"", received, control_pool, receive, send, extra)
            return
        if max_in_flight is not None and in_flight >= max_in_flight:
            # bounded: bodies buffered at once, before this one is read
            await refuse(headers, receive, send, 503, error_body(busy_message), extra)
            return
        in_flight += 1
        try:
            await read_and_run(scope, headers, received, receive, send, extra)
        finally:
            in_flight -= 1

    async def read_and_run(scope, headers, received, receive, send,
                           extra: tuple[tuple[str, str], ...]) -> None:
        buffer = io.BytesIO()  # getvalue() hands over its buffer: no second copy
        more = True
        while more:  # the first receive() answers "Expect: 100-continue"
            try:
                message = await asyncio.wait_for(receive(), limits.body_timeout)
            except asyncio.TimeoutError:
                await respond(send, 408, error_body(
                    f"request body stalled for {limits.body_timeout:g} s"), close=True,
                    extra=extra)
                return
            if message["type"] == "http.disconnect":
                return
            buffer.write(message.get("body", b""))
            more = message.get("more_body", False)
            if buffer.tell() > limits.max_body_bytes:  # chunked: no length declared
                del buffer
                await respond(send, 413, too_large(f"more than {limits.max_body_bytes} bytes"),
                              extra=extra)
                return
        body = buffer.getvalue()
        del buffer
        await run(scope, headers, body, received, pool, receive, send, extra)

    async def watch(receive, cancelled: threading.Event) -> None:
        """Sets ``cancelled`` when the client goes away while its request is handled.
        With the body read, uvicorn's ``receive()`` only returns again when the
        connection is lost (a close, a reset, or EOF: a half-closed connection could not
        read its answer either), as ``http.disconnect``."""
        while (await receive())["type"] != "http.disconnect":
            pass
        cancelled.set()

    async def run(scope, headers, body: bytes, received: float, on: ThreadPoolExecutor,
                  receive, send, extra: tuple[tuple[str, str], ...] = ()) -> None:
        raw_query = scope.get("query_string", b"")
        request = HttpRequest(scope["method"], scope["path"], raw_query.decode("latin-1"),
                              headers, body, received,
                              target=scope.get("tfdeploy.target", ""))
        del body
        started = time.monotonic()
        watcher = asyncio.ensure_future(watch(receive, request.cancelled))
        call = asyncio.get_running_loop().run_in_executor(on, handler, request)
        try:
            response = await asyncio.wait_for(call, limits.timeout_seconds)
        except asyncio.TimeoutError:
            # The worker thread cannot be stopped: if it already runs it finishes and its
            # answer is dropped; if it was still queued it never starts.
            await respond(send, 504, error_body(
                f"Deadline Exceeded: no response within {limits.timeout_seconds:g} s "
                f"(waited {time.monotonic() - started:.1f} s)"), extra=extra)
            return
        except Exception:
            log.exception("handler failed on %s %s", scope["method"], scope["path"])
            await respond(send, 500, error_body(INTERNAL_MESSAGE), extra=extra)
            return
        finally:
            watcher.cancel()
        if (not isinstance(response, HttpResponse) or not 200 <= response.status <= 599
                or not isinstance(response.body, (bytes, bytearray))
                or not (response.content_type.isascii() and response.content_type.isprintable())):
            log.error("handler returned %r for %s %s", response, scope["method"], scope["path"])
            await respond(send, 500, error_body("internal error: handler returned no response"),
                          extra=extra)
            return
        await respond(send, response.status, bytes(response.body), response.content_type,
                      extra=tuple(response.headers))

    return app


def _listen(host: str, port: int, backlog: int) -> socket.socket:
    """A listening socket, so ``port=0`` can be read back and a port in use is an
    OSError naming host:port before any thread starts."""
    try:
        family, _, _, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)[0]
        # proto spelled out: asyncio sets TCP_NODELAY only on sockets that say TCP; without
        # it a keep-alive answer can wait 40 ms on Nagle and delayed ACKs.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT, not in use
        sock.bind(address)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


@dataclass
class TlsFiles:
    """HTTPS: the server's key and certificate (PEM text), and a CA that client
    certificates must chain to when ``client_verify``.  uvicorn reads PEM files, so they
    are written to a private (0700) directory that exists until the server listens."""

    key: str
    cert: str
    ca: str = ""
    client_verify: bool = False
    directory: str = ""

    def uvicorn_options(self) -> dict[str, Any]:
        import ssl
        import tempfile

        self.directory = tempfile.mkdtemp(prefix="tfdeploy-tls-")
        paths = {}
        for name, text in (("key", self.key), ("cert", self.cert), ("ca", self.ca)):
            if text:
                path = os.path.join(self.directory, f"{name}.pem")
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as fh:
                    fh.write(text)
                paths[name] = path
        options: dict[str, Any] = {"ssl_keyfile": paths["key"], "ssl_certfile": paths["cert"]}
        if "ca" in paths:
            options["ssl_ca_certs"] = paths["ca"]
        options["ssl_cert_reqs"] = ssl.CERT_REQUIRED if self.client_verify else ssl.CERT_NONE
        return options

    def forget(self) -> None:
        """The key leaves the disk once the context holds it."""
        import shutil

        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)


def serve(handler: Handler, host: str, port: int, *, max_body_bytes: int,
          num_threads: int = 16, control_threads: int = 0,
          max_in_flight: int | None = None, busy_message: str = "server busy; retry later",
          timeout_seconds: float | None = None,
          idle_timeout: float = 30.0, backlog: int = 1024, header_timeout: float = 10.0,
          body_timeout: float = 30.0, max_header_bytes: int = 64 << 10,
          tls: TlsFiles | None = None,
          layer_headers: LayerHeaders | None = None) -> HttpServerHandle:
    """Serve ``handler`` on host:port from a background thread; return once listening.

    ``timeout_seconds`` bounds each handler call, queueing for a worker included (TF
    Serving's ``--rest_api_timeout_in_ms``): past it the client gets 504.  ``body_timeout``
    is the longest the body may stall between two reads, not its total time.

    ``control_threads`` > 0: requests without a body (GETs: status, metadata, metrics)
    run on that many threads of their own, never queued behind the others.
    ``max_in_flight``: requests with a body being read or handled at once; one more is
    answered 503 ``busy_message`` before its body is read.
    ``layer_headers``: more headers for this layer's own answers (413, 503, 408, 500,
    504), as the handler would have added them (the REST API's CORS headers).
    """
    sock = _listen(host, port, backlog)
    limits = _Limits(max_body_bytes, max_header_bytes, header_timeout, body_timeout,
                     timeout_seconds)
    pool = ThreadPoolExecutor(num_threads, thread_name_prefix="rest")
    control_pool = (ThreadPoolExecutor(control_threads, thread_name_prefix="rest-control")
                    if control_threads > 0 else None)
    protocol = type("Protocol", (_Protocol,), {"limits": limits})
    config = uvicorn.Config(
        _app(handler, pool, limits, control_pool, max_in_flight, busy_message,
             layer_headers),
        http=protocol, ws="none", lifespan="off", interface="asgi3",
        log_config=None, access_log=False, proxy_headers=False, server_header=False,
        headers=[("server", SERVER_NAME.decode())], backlog=backlog,
        timeout_keep_alive=idle_timeout,  # type: ignore[arg-type]  (a float works)
        timeout_graceful_shutdown=30,
        **(tls.uvicorn_options() if tls else {}))
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)  # no start-up banners
    server = uvicorn.Server(config)

    async def run() -> None:
        try:
            await server.serve(sockets=[sock])
        finally:  # past the grace: whatever is still open goes
            for connection in list(server.server_state.connections):
                connection.transport.abort()

    thread = threading.Thread(target=asyncio.run, args=(run(),), name="rest-http", daemon=True)
    thread.start()
    try:
        while not server.started and thread.is_alive():  # the socket already queues clients
            time.sleep(0.01)
    finally:
        if tls:
            tls.forget()
    pools = [pool] + ([control_pool] if control_pool is not None else [])
    if not thread.is_alive():
        for p in pools:
            p.shutdown(wait=False)
        raise OSError(f"REST server on {host}:{port} did not start")
    return HttpServerHandle(server, thread, pools, sock.getsockname()[1])
