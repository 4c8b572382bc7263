"""The embedded server's REST front end under rude clients, over real sockets on
127.0.0.1: 64 concurrent clients, silent and half-sent connections, malformed framing,
a huge numeric body, deep nesting, and SIGTERM with idle keep-alive connections open.
Bounded in count and time."""

from __future__ import annotations

import http.client as httpclient
import json
import re
import socket
import threading

import psutil
import pytest
from servers import http, memory, reset_peak
from small_models import save_half_plus_two, serve_one

CLIENTS, PER_CLIENT = 64, 10


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rest")
    model = save_half_plus_two(tmp / "model")
    _, srv = serve_one(model, tmp, "hp2", "--max_request_bytes=200000000")
    srv.wait_available(1, model="hp2")
    yield srv
    srv.stop()


def raw_request(port: int, data: bytes, timeout: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
        return b"".join(chunks)


def test_64_concurrent_clients_get_every_answer(server):
    failures: list[str] = []
    answered = [0]
    lock = threading.Lock()

    def client() -> None:
        conn = httpclient.HTTPConnection("127.0.0.1", server.rest_port, timeout=60)
        for _ in range(PER_CLIENT):  # keep-alive: one connection per client
            try:
                conn.request("POST", "/v1/models/hp2:predict",
                             body=json.dumps({"instances": [[1.0]]}),
                             headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                body = json.loads(response.read())
                if response.status != 200 or body != {"predictions": [[2.5]]}:
                    raise AssertionError(f"{response.status} {body}")
                with lock:
                    answered[0] += 1
            except Exception as exc:  # noqa: BLE001 (record every kind of failure)
                with lock:
                    failures.append(repr(exc))
                conn.close()
                conn = httpclient.HTTPConnection("127.0.0.1", server.rest_port, timeout=60)
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert failures == [] and answered[0] == CLIENTS * PER_CLIENT


def test_silent_and_half_sent_connections_do_not_block_others(server):
    idle = [socket.create_connection(("127.0.0.1", server.rest_port)) for _ in range(100)]
    partial = []
    for _ in range(100):
        s = socket.create_connection(("127.0.0.1", server.rest_port))
        s.sendall(b"POST /v1/models/hp2:predict HTTP/1.1\r\nHost: x\r\nContent-Le")
        partial.append(s)
    try:
        status, body = http("GET", f"{server.rest}/v1/models/hp2", timeout=10)
        assert status == 200 and body["model_version_status"][0]["state"] == "AVAILABLE"
    finally:
        for s in idle + partial:
            s.close()


@pytest.mark.parametrize("request_bytes", [
    b"POST /v1/models/hp2:predict HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n{}",
    b"POST /v1/models/hp2:predict HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
    b"GARBAGE\r\n\r\n",
])
def test_malformed_framing_is_a_400_never_a_hang(server, request_bytes):
    reply = raw_request(server.rest_port, request_bytes)
    assert reply.startswith(b"HTTP/1.1 400"), reply[:200]
    assert b'"error"' in reply


def test_expect_100_continue_is_answered(server):
    body = json.dumps({"instances": [[1.0]]}).encode()
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=10) as s:
        s.sendall(b"POST /v1/models/hp2:predict HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Type: application/json\r\nExpect: 100-continue\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body))
        assert s.recv(100).startswith(b"HTTP/1.1 100")
        s.sendall(body)
        reply = b""                   # headers and body may come in separate segments
        while not _whole(reply) and (chunk := s.recv(65536)):
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 200") and b"2.5" in reply, reply


def _whole(reply: bytes) -> bool:
    """An HTTP reply with its headers and all the body its Content-Length announces."""
    head, sep, body = reply.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    return bool(sep and length and len(body) >= int(length.group(1)))


def test_deep_nesting_and_a_big_numeric_body(server):
    status, body = http("POST", f"{server.rest}/v1/models/hp2:predict",
                        b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    assert status == 400 and "nesting deeper than" in body["error"]
    process = psutil.Process(server.proc.pid)
    before = process.memory_info().rss
    rows = b",".join(b"[%d.25]" % (i % 1000) for i in range(4_000_000))  # ~40 MB
    status, body = http("POST", f"{server.rest}/v1/models/hp2:predict",
                        b'{"instances": [' + rows + b"]}", timeout=300)
    assert status == 200 and len(body["predictions"]) == 4_000_000
    assert body["predictions"][3] == [0.5 * 3.25 + 2]
    growth = process.memory_info().rss - before
    # json.loads would need ~4x the body for the request alone (a float object per
    # number); the answer's JSON text is built on top of that either way
    assert growth < 1_200 << 20, f"server grew by {growth >> 20} MB"


@pytest.mark.parametrize("item", [b"{}", b'"ab"', b'{"b64": "AA=="}'])
def test_a_body_of_tiny_values_is_refused_before_it_costs_memory(server, item):
    """~30 MB of `[{}, {}, ...]` grew the server by ~0.9 GB before its 400 (a Python
    object per value); now the scan refuses it: the server's peak RSS (VmHWM, reset just
    before) grows by well under 2x the body, whose own bytes are in that figure."""
    pid = server.proc.pid
    body = b'{"instances": [' + b", ".join([item] * (30_000_000 // (len(item) + 2))) + b"]}"
    before = reset_peak(pid)
    status, reply = http("POST", f"{server.rest}/v1/models/hp2:predict", body, timeout=120)
    growth = memory(pid) - before
    assert growth < 2 * len(body), f"server peak grew by {growth >> 20} MB"
    assert status == 400 and reply["error"].startswith("JSON body too costly to parse: ")


def test_sigterm_with_idle_keep_alive_connections_exits_promptly(tmp_path):
    model = save_half_plus_two(tmp_path / "model")
    _, srv = serve_one(model, tmp_path, "hp2")
    srv.wait_available(1, model="hp2")
    conns = []
    for _ in range(4):  # keep-alive connections, idle after one request each
        conn = httpclient.HTTPConnection("127.0.0.1", srv.rest_port, timeout=10)
        conn.request("GET", "/v1/models/hp2")
        conn.getresponse().read()
        conns.append(conn)
    # exit status 0: it drained and exited by itself (a hang would end in SIGKILL, -9)
    assert srv.stop(timeout=30) == 0
    for conn in conns:
        conn.close()
