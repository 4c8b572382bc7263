"""HTTP server candidates for the REST front end, measured in one run on 127.0.0.1.

    .venv/bin/python bench/http_layer.py [--seconds 1.2] [--only NAME ...]

Each candidate serves two routes from a server subprocess with a bounded pool of 16
worker threads where the library has one (``http.server`` has a thread per connection):
``/`` answers at once, ``/sleep`` sleeps 20 ms first (blocking work, as TensorFlow does).
An asyncio client in this process drives 1 and 64 concurrent keep-alive connections for
``--seconds`` each and counts requests and errors (resets, refused connects, non-200
answers).  Then: the server's RSS, and the time from SIGTERM to exit with 8 idle
keep-alive connections and 8 silent ones open (capped at 2 s, then SIGKILL).  Ratios are
to ``http.server`` measured in the same run.  About 5 s per candidate.
Last: the peak RSS growth of the ``tfdeploy`` server receiving a 100 MB body within and
over its cap.

The server side of every candidate is in this file (``--serve NAME``), so what is
measured is the library, not our code around it -- except ``tfdeploy``, which is
``tfdeploy.serving.http_server`` itself.
"""

from __future__ import annotations

import sys

# This file is named http.py: its folder, first on sys.path when run as a script, would
# shadow the standard library's ``http`` package for every library imported below.
if sys.path and sys.path[0].rstrip("/").endswith("bench"):
    del sys.path[0]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

THREADS = 16
BODY = b'{"ok":true}'
STOP_CAP = 2.0


def work(path: str) -> bytes:
    """The handler every candidate runs on a worker thread."""
    if path == "/sleep":
        time.sleep(0.02)
    return BODY


# -- server side: one function per candidate, returning (port, stop) ---------------------
def serve_http_server() -> tuple[int, Callable[[], None]]:
    """Today's REST front end (tfdeploy/serving/rest_api.py): ThreadingHTTPServer,
    non-daemon threads joined on close, HTTP/1.0 (a connection per request)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server naming)
            body = work(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    class Server(ThreadingHTTPServer):
        daemon_threads = False
        block_on_close = True

    httpd = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()

    def stop() -> None:
        httpd.shutdown()
        httpd.server_close()

    return httpd.server_address[1], stop


def wsgi_app(environ, start_response):
    body = work(environ["PATH_INFO"])
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


def serve_cheroot() -> tuple[int, Callable[[], None]]:
    from cheroot import wsgi

    server = wsgi.Server(("127.0.0.1", 0), wsgi_app, numthreads=THREADS,
                         request_queue_size=1024, timeout=30)
    server.prepare()
    threading.Thread(target=server.serve, daemon=True).start()
    return server.bind_addr[1], server.stop


def serve_waitress() -> tuple[int, Callable[[], None]]:
    from waitress.server import create_server

    server = create_server(wsgi_app, host="127.0.0.1", port=0, threads=THREADS, backlog=1024,
                           channel_timeout=30)
    threading.Thread(target=server.run, daemon=True).start()

    def stop() -> None:  # waitress has no drain: close the pool, then every channel
        server.task_dispatcher.shutdown(timeout=STOP_CAP)
        for channel in list(server._map.values()):
            channel.close()

    return server.effective_port, stop


def asgi_app(pool: ThreadPoolExecutor):
    async def app(scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        body = await asyncio.get_running_loop().run_in_executor(pool, work, scope["path"])
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
    return app


def bound_socket() -> socket.socket:
    # IPPROTO_TCP spelled out: asyncio sets TCP_NODELAY only on sockets whose proto says TCP
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def serve_uvicorn(http: str) -> tuple[int, Callable[[], None]]:
    import uvicorn

    sock = bound_socket()
    config = uvicorn.Config(asgi_app(ThreadPoolExecutor(THREADS)), http=http, lifespan="off",
                            log_config=None, access_log=False, backlog=1024,
                            timeout_keep_alive=30, timeout_graceful_shutdown=STOP_CAP)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()

    def stop() -> None:
        server.should_exit = True
        thread.join()

    return sock.getsockname()[1], stop


def serve_hypercorn() -> tuple[int, Callable[[], None]]:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    sock = bound_socket()
    config = Config()
    config.bind = [f"fd://{sock.fileno()}"]
    config.backlog = 1024
    config.keep_alive_timeout = 30
    config.graceful_timeout = STOP_CAP
    config.accesslog = None
    app = asgi_app(ThreadPoolExecutor(THREADS))
    loop = asyncio.new_event_loop()
    done = asyncio.Event()

    async def main() -> None:
        await serve(app, config, shutdown_trigger=done.wait, mode="asgi")

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()

    def stop() -> None:
        loop.call_soon_threadsafe(done.set)
        thread.join()
        sock.close()  # held until now: hypercorn serves a duplicate of its descriptor

    return sock.getsockname()[1], stop


def serve_aiohttp() -> tuple[int, Callable[[], None]]:
    from aiohttp import web

    sock = bound_socket()
    pool = ThreadPoolExecutor(THREADS)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    async def handler(request: web.BaseRequest) -> web.Response:
        body = await loop.run_in_executor(pool, work, request.path)
        return web.Response(body=body, content_type="application/json")

    async def start() -> web.ServerRunner:
        runner = web.ServerRunner(web.Server(handler, access_log=None),
                                  shutdown_timeout=STOP_CAP, handle_signals=False)
        await runner.setup()
        await web.SockSite(runner, sock, backlog=1024).start()
        return runner

    runner = loop.run_until_complete(start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def stop() -> None:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result()
        loop.call_soon_threadsafe(loop.stop)

    return sock.getsockname()[1], stop


def serve_tfdeploy() -> tuple[int, Callable[[], None]]:
    from tfdeploy.serving.http_server import HttpResponse, serve

    handle = serve(lambda req: HttpResponse(200, work(req.path)), "127.0.0.1", 0,
                   max_body_bytes=1 << 20, num_threads=THREADS, backlog=1024)
    return handle.port, lambda: handle.stop(STOP_CAP)


CANDIDATES: dict[str, Callable[[], tuple[int, Callable[[], None]]]] = {
    "http.server": serve_http_server,
    "cheroot": serve_cheroot,
    "waitress": serve_waitress,
    "uvicorn+httptools": lambda: serve_uvicorn("httptools"),
    "uvicorn+h11": lambda: serve_uvicorn("h11"),
    "hypercorn": serve_hypercorn,
    "aiohttp": serve_aiohttp,
    "tfdeploy": serve_tfdeploy,
}


def run_body_server(cap: int) -> None:
    """``tfdeploy`` server process whose handler only looks at the body's length."""
    from tfdeploy.serving.http_server import HttpResponse, serve

    handle = serve(lambda req: HttpResponse(200, b'{"n":%d}' % len(req.body)), "127.0.0.1", 0,
                   max_body_bytes=cap)
    print(handle.port, flush=True)
    sys.stdin.read()
    handle.stop(1)


def body_peak_mib(size: int, cap: int) -> tuple[int, float]:
    """Status and growth of the server's peak RSS (VmHWM) for one ``size``-byte body."""
    proc = subprocess.Popen([sys.executable, __file__, "--serve-body", str(cap)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")  # warm: first-request allocations
            s.recv(65536)
        before = vm_kib(proc.pid, "VmHWM")
        block = b"z" * (1 << 20)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size)
            sender = threading.Thread(target=lambda: [s.sendall(block)
                                                      for _ in range(size // len(block))])
            sender.start()
            head = s.recv(65536)
            sender.join()
        return int(head.split()[1]), (vm_kib(proc.pid, "VmHWM") - before) / 1024
    finally:
        proc.stdin.close()
        proc.wait(10)


def run_server(name: str) -> None:
    """Server process: print the port, serve until SIGTERM, stop, exit."""
    import logging

    logging.disable(logging.CRITICAL)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    port, stop = CANDIDATES[name]()
    print(port, flush=True)
    parent = os.getppid()
    while not stopping.wait(0.5):
        if os.getppid() != parent:  # the bench was killed: do not linger
            os._exit(1)
    stop()
    os._exit(0)


# -- client side ---------------------------------------------------------------------------
_LENGTH = re.compile(rb"(?i)\r\ncontent-length:\s*(\d+)")


async def load(port: int, path: str, clients: int, seconds: float) -> tuple[int, int]:
    """Requests answered 200 and errors, over ``clients`` keep-alive connections."""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    deadline = time.perf_counter() + seconds
    counts = [0, 0]

    async def client() -> None:
        reader = writer = None
        while time.perf_counter() < deadline:
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(request)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                match = _LENGTH.search(head)
                await reader.readexactly(int(match[1]) if match else 0)
                counts[0 if head[9:12] == b"200" else 1] += 1
                if head.startswith(b"HTTP/1.0") or b"connection: close" in head.lower():
                    writer.close()
                    writer = None
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError,
                    asyncio.LimitOverrunError):
                counts[1] += 1
                if writer is not None:
                    writer.close()
                writer = None
        if writer is not None:
            writer.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return counts[0], counts[1]


def vm_kib(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def rss_mib(pid: int) -> float:
    return vm_kib(pid) / 1024


def idle_connections(port: int, n: int) -> list[socket.socket]:
    """``n`` keep-alive connections that each completed one request and then went idle."""
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        data = b""
        while not data.endswith(BODY):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        socks.append(s)
    return socks


def measure(name: str, seconds: float) -> dict[str, float] | None:
    proc = subprocess.Popen([sys.executable, __file__, "--serve", name],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    if not line.strip().isdigit():
        proc.kill()
        print(f"{name}: did not start", file=sys.stderr)
        return None
    port = int(line)
    for _ in range(100):  # some libraries listen a moment after they have bound
        try:
            for s in idle_connections(port, 1):
                s.close()
            break
        except OSError:
            time.sleep(0.05)
    row: dict[str, float] = {}
    for path, label in (("/", "fast"), ("/sleep", "sleep")):
        for clients in (1, 64):
            ok, errors = asyncio.run(load(port, path, clients, seconds))
            row[f"{label}@{clients}"] = ok / seconds
            row[f"err_{label}@{clients}"] = errors
    row["rss"] = rss_mib(proc.pid)
    print(f"{name}: measured", file=sys.stderr, flush=True)
    socks = idle_connections(port, 8) + [socket.create_connection(("127.0.0.1", port))
                                         for _ in range(8)]
    started = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_CAP)
        row["stop"] = time.perf_counter() - started
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        row["stop"] = float("inf")
    for s in socks:
        s.close()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=0.8, help="per load measurement")
    parser.add_argument("--only", nargs="*", choices=sorted(CANDIDATES), help="candidates")
    parser.add_argument("--serve", choices=sorted(CANDIDATES), help=argparse.SUPPRESS)
    parser.add_argument("--serve-body", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return run_server(args.serve)
    if args.serve_body:
        return run_body_server(args.serve_body)
    names = args.only or list(CANDIDATES)
    if "http.server" not in names:
        names.insert(0, "http.server")
    rows = {name: row for name in names if (row := measure(name, args.seconds))}
    base = rows["http.server"]
    print(f"{'candidate':18} {'req/s fast@1':>12} {'fast@64':>8} {'sleep@1':>8} "
          f"{'sleep@64':>8}   {'ratio f@1':>9} {'f@64':>5} {'s@1':>5} {'s@64':>5}   "
          f"{'errors':>11}  {'RSS MiB':>7}  {'stop s':>6}")
    for name, r in rows.items():
        keys = ("fast@1", "fast@64", "sleep@1", "sleep@64")
        errors = "/".join(str(int(r[f"err_{k}"])) for k in keys)
        stop = f"{r['stop']:.2f}" if r["stop"] != float("inf") else f">{STOP_CAP:.0f} KILL"
        print(f"{name:18} " + " ".join(f"{r[k]:>{12 if i == 0 else 8}.0f}"
                                       for i, k in enumerate(keys))
              + "   " + " ".join(f"{r[k] / base[k]:>{9 if i == 0 else 5}.2f}"
                                 for i, k in enumerate(keys))
              + f"   {errors:>11}  {r['rss']:>7.1f}  {stop:>6}")
    print("errors: fast@1/fast@64/sleep@1/sleep@64; stop: SIGTERM to exit, with 8 idle "
          "keep-alive connections and 8 connected but silent ones open")
    if "tfdeploy" in rows:
        for size, cap in ((100 << 20, 256 << 20), (100 << 20, 1 << 20)):
            status, grown = body_peak_mib(size, cap)
            print(f"tfdeploy: a {size >> 20} MiB body, cap {cap >> 20} MiB: {status}, "
                  f"server peak RSS +{grown:.0f} MiB")


if __name__ == "__main__":
    main()
