"""The REST front end's HTTP layer (tfdeploy/serving/http_server.py) under load and
faults, over real sockets on 127.0.0.1 with a small handler (echo / block / raise).

Bounded: at most 64 x 20 requests, 300 idle connections, one 100 MB body; every socket
has a timeout, so a hang fails a test instead of stalling it.  No timing assertions
beyond generous bounds against hangs: the behaviour is what is checked.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tfdeploy.serving.http_server import HttpRequest, HttpResponse, serve
from tfdeploy.tfs.codes import INTERNAL_MESSAGE

HANG = 10.0  # generous bound: only there so that a regression fails instead of hanging


class Gate:
    """Blocks ``/block`` handlers until released, and counts those that have started."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Semaphore(0)


def make_handler(gate: Gate):
    def handler(req: HttpRequest) -> HttpResponse:
        if req.path == "/raise":
            raise RuntimeError("boom from the handler")
        if req.path == "/block":
            gate.started.release()
            gate.release.wait(HANG * 3)
        if req.path == "/sleep":
            time.sleep(float(req.query))
        body = {"method": req.method, "path": req.path, "query": req.query,
                "n": len(req.body), "ctype": req.headers.get("content-type", "")}
        return HttpResponse(200, json.dumps(body).encode())
    return handler


@pytest.fixture
def gate():
    g = Gate()
    yield g
    g.release.set()


@pytest.fixture
def start(gate):
    """Start servers with the test's options; stop them all afterwards."""
    handles = []

    def _start(**options):
        options = {"max_body_bytes": 1 << 20, **options}
        handle = serve(make_handler(gate), "127.0.0.1", 0, **options)
        handles.append(handle)
        return handle

    yield _start
    gate.release.set()
    for handle in handles:
        handle.stop(0)


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=HANG)


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response from a raw socket: status, headers (lower-case names), body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a full response: {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict((k.lower(), v.strip()) for k, v in (ln.split(":", 1) for ln in lines[1:]))
    length = int(headers.get("content-length", 0))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return int(lines[0].split()[1]), headers, rest[:length]


def raw(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    with connect(port) as sock:
        sock.sendall(data)
        return read_response(sock)


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed ``sock`` (EOF, possibly after a 408 answer)."""
    try:
        while chunk := sock.recv(65536):
            assert chunk.startswith(b"HTTP/1.1 408") or b"request headers" in chunk, chunk
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def get(port: int, path: str = "/echo") -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HANG)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


# -- load ---------------------------------------------------------------------------------
def test_64_concurrent_keepalive_clients_get_no_connection_errors(start):
    server = start(num_threads=16)
    errors: list[str] = []

    def client(i: int) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=HANG)
        ok = 0
        for j in range(20):
            try:
                conn.request("POST", f"/echo?c={i}&r={j}", body=b"x" * j,
                             headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                body = json.loads(resp.read())
                assert resp.status == 200 and body["n"] == j and body["query"] == f"c={i}&r={j}"
                ok += 1
            except OSError as exc:  # resets, refusals: what the backlog of 5 produced
                errors.append(repr(exc))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=HANG)
        conn.close()
        return ok

    with ThreadPoolExecutor(64) as pool:
        answered = sum(pool.map(client, range(64)))
    assert errors == []
    assert answered == 64 * 20


def test_300_half_open_connections_neither_block_a_request_nor_stay_open(start):
    server = start(header_timeout=1.0, idle_timeout=1.0)
    silent = [connect(server.port) for _ in range(150)]
    partial = [connect(server.port) for _ in range(150)]
    for sock in partial:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Half: ")
    try:
        assert get(server.port)[0] == 200  # served while the 300 are open
        deadline = time.monotonic() + HANG  # one bound for all 300, not one each
        for sock in silent + partial:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            assert closed_by_server(sock), "a half-open connection was left open"
    finally:
        for sock in silent + partial:
            sock.close()


def test_slow_handlers_filling_the_pool_block_neither_accepts_nor_reads(start, gate):
    """With every worker busy, the layer still reads and answers what needs no worker."""
    server = start(num_threads=2, max_body_bytes=100)
    with ThreadPoolExecutor(2) as pool:
        blocked = [pool.submit(get, server.port, "/block") for _ in range(2)]
        for _ in range(2):
            assert gate.started.acquire(timeout=HANG)
        assert raw(server.port, b"BROKEN\r\n\r\n")[0] == 400
        assert raw(server.port, b"POST /echo HTTP/1.1\r\nContent-Length: 101\r\n\r\n")[0] == 413
        gate.release.set()
        assert [f.result(HANG)[0] for f in blocked] == [200, 200]


# -- shutdown -----------------------------------------------------------------------------
def test_stop_closes_idle_connections_at_once_and_lets_in_flight_requests_finish(start, gate):
    server = start()
    idle = []
    for _ in range(5):  # keep-alive connections, idle after one answered request
        sock = connect(server.port)
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_response(sock)[0] == 200
        idle.append(sock)
    idle += [connect(server.port) for _ in range(5)]  # connected, nothing sent
    with ThreadPoolExecutor(2) as pool:
        in_flight = pool.submit(get, server.port, "/block")
        assert gate.started.acquire(timeout=HANG)
        stopping = pool.submit(server.stop, HANG)
        for sock in idle:  # closed while the in-flight request still runs
            assert sock.recv(1) == b""
            sock.close()
        assert not in_flight.done() and not stopping.done()
        with pytest.raises(OSError):  # no longer accepting
            socket.create_connection(("127.0.0.1", server.port), timeout=HANG)
        gate.release.set()
        assert in_flight.result(HANG) == (200, {"method": "GET", "path": "/block", "query": "",
                                                 "n": 0, "ctype": ""})
        stopping.result(HANG)


def test_stop_returns_after_grace_with_a_request_that_never_finishes(start, gate):
    server = start()
    idle = connect(server.port)
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(get, server.port, "/block")
        assert gate.started.acquire(timeout=HANG)
        started = time.monotonic()
        server.stop(2)
        assert time.monotonic() - started < HANG
        with pytest.raises((http.client.HTTPException, OSError)):
            in_flight.result(HANG)  # dropped at the end of the grace
    assert idle.recv(1) == b""
    idle.close()


def test_an_idle_keepalive_connection_is_closed_after_the_idle_timeout(start):
    server = start(idle_timeout=0.5)
    with connect(server.port) as sock:
        for _ in range(2):  # kept alive between requests...
            sock.sendall(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
            assert read_response(sock)[0] == 200
        assert sock.recv(1) == b""  # ...and closed once idle


def test_the_layer_loads_no_tensorflow():
    code = ("import sys, tfdeploy.serving.http_server\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'tensorflow'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout.strip()
    assert out == "[]"


def test_port_in_use_is_an_oserror_naming_host_and_port(start):
    server = start()
    with pytest.raises(OSError, match=f"127.0.0.1:{server.port}"):
        serve(make_handler(Gate()), "127.0.0.1", server.port, max_body_bytes=10)


# -- malformed requests -------------------------------------------------------------------
@pytest.mark.parametrize("request_bytes", [
    b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx",
    b"GARBAGE\r\n\r\n",
    b"GET /echo HTTP/9.9 extra\r\n\r\n",
    b"GET /echo HTTP/1.1\r\nA header without colon\r\n\r\n",
    b"GET /echo HTTP/1.1\r\nBad\x01Name: x\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n",
    b"GET /echo HTTP/1.1\r\nX-Big: " + b"a" * (70 << 10) + b"\r\n\r\n",
], ids=["cl-negative", "cl-abc", "cl-twice", "request-line", "bad-version", "no-colon",
        "ctl-in-name", "bad-chunk", "headers-too-big"])
def test_malformed_requests_get_400_json_and_no_hang(start, request_bytes):
    server = start()
    status, headers, body = raw(server.port, request_bytes)
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["error"]
    assert get(server.port)[0] == 200  # and the server goes on


def test_handler_exception_is_500_json_and_the_server_goes_on(start, caplog):
    """The client gets a fixed text (internals stay in the log, issue 24), the log the
    exception, and the server goes on."""
    server = start()
    status, headers, body = raw(server.port, b"GET /raise HTTP/1.1\r\nHost: a\r\n\r\n")
    assert status == 500 and headers["content-type"] == "application/json"
    assert json.loads(body)["error"] == INTERNAL_MESSAGE
    assert "boom from the handler" in caplog.text
    assert get(server.port)[0] == 200


def test_a_handler_past_the_request_timeout_gets_504_json(start):
    server = start(timeout_seconds=0.5)
    status, headers, body = raw(server.port, b"GET /sleep?3 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert status == 504 and headers["content-type"] == "application/json"
    assert "Deadline Exceeded" in json.loads(body)["error"]
    assert get(server.port, "/sleep?0")[0] == 200


def test_a_stalled_body_gets_408_and_is_closed(start):
    server = start(body_timeout=0.5)
    with connect(server.port) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
        status, _, body = read_response(sock)
        assert status == 408 and "stalled" in json.loads(body)["error"]
        assert sock.recv(1) == b""


# -- Expect and the body cap --------------------------------------------------------------
def test_expect_100_continue_is_answered_before_the_body_is_sent(start):
    server = start()
    with connect(server.port) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
                     b"Content-Length: 5\r\n\r\n")
        assert sock.recv(1024) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"hello")
        status, _, body = read_response(sock)
        assert status == 200 and json.loads(body)["n"] == 5


def test_expect_100_continue_over_the_cap_gets_413_instead_of_continue(start):
    server = start(max_body_bytes=1000)
    with connect(server.port) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
                     b"Content-Length: 5000\r\n\r\n")
        status, _, body = read_response(sock)
        assert status == 413 and "limit of 1000 bytes" in json.loads(body)["error"]
        assert sock.recv(1) == b""  # closed: the body is not wanted


def test_a_chunked_body_over_the_cap_gets_413_and_the_connection_stays_usable(start):
    server = start(max_body_bytes=1000)
    chunk = b"%x\r\n%s\r\n" % (600, b"y" * 600)
    with connect(server.port) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + chunk * 3 + b"0\r\n\r\n")
        status, _, body = read_response(sock)
        assert status == 413 and "limit of 1000 bytes" in json.loads(body)["error"]
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
        assert read_response(sock)[0] == 200


def test_a_connection_idle_after_a_dropped_body_is_closed_after_the_idle_timeout(start):
    server = start(max_body_bytes=1000, idle_timeout=0.5)
    with connect(server.port) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n")
        assert read_response(sock)[0] == 413  # answered before the body...
        sock.sendall(b"x" * 5000)  # ...which is then read and dropped
        assert sock.recv(1) == b""


def test_an_oversized_body_with_connection_close_is_drained_before_the_answer(start):
    """A client that says "Connection: close" and sends its whole body before reading
    (urllib) gets the 413, not a connection reset."""
    import urllib.error
    import urllib.request

    server = start(max_body_bytes=1000)
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}/echo",
                                     data=b"x" * 3_000_000, method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=HANG)
    assert info.value.code == 413 and b"exceeds the limit of 1000" in info.value.read()


def test_a_dropped_body_that_stalls_is_closed_after_the_body_timeout(start):
    server = start(max_body_bytes=1000, body_timeout=0.5)
    with connect(server.port) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n")
        assert read_response(sock)[0] == 413
        sock.sendall(b"x" * 100)  # and no more
        assert sock.recv(1) == b""


SERVER_SCRIPT = """
import sys
from tfdeploy.serving.http_server import HttpResponse, serve
handle = serve(lambda req: HttpResponse(200, b'{"n":%d}' % len(req.body)), "127.0.0.1", 0,
               max_body_bytes=int(sys.argv[1]))
print(handle.port, flush=True)
sys.stdin.read()
handle.stop(1)
"""


def vm_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def test_an_oversized_body_gets_413_naming_the_limit_without_being_kept_in_memory():
    """100 MB against a 1 MB cap, the server in a subprocess: its peak RSS (VmHWM) grows
    by far less than the body, and the client reads the 413 (the body is drained)."""
    size, cap = 100 << 20, 1 << 20
    proc = subprocess.Popen([sys.executable, "-c", SERVER_SCRIPT, str(cap)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        assert raw(port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")[0] == 200
        before = vm_kib(proc.pid, "VmHWM")
        with connect(port) as sock, ThreadPoolExecutor(1) as pool:
            sock.sendall(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size)

            def send_body() -> None:
                block = b"z" * (1 << 20)
                for _ in range(size // len(block)):
                    sock.sendall(block)

            sending = pool.submit(send_body)
            status, _, body = read_response(sock)
            sending.result(HANG * 3)  # the whole body went through: drained, not refused
            sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")  # and the connection lives
            assert read_response(sock)[0] == 200
        grown_mib = (vm_kib(proc.pid, "VmHWM") - before) / 1024
        assert status == 413
        assert json.loads(body)["error"] == (f"request body of {size} bytes exceeds the "
                                             f"limit of {cap} bytes")
        assert grown_mib < 20, f"server peak RSS grew by {grown_mib:.0f} MiB"
    finally:
        proc.stdin.close()
        proc.wait(HANG)
