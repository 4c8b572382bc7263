"""TLS end to end (issue 24): with --ssl_config_file our server speaks HTTPS on REST as
well as TLS on gRPC (tensorflow_model_server's REST stays plain), with client
certificates required by client_verify.  openssl-made certificates, a real server."""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from certs import make_certs, ssl_config
from servers import ServerProcess


def _context(ca, cert=None, key=None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    if cert:
        context.load_cert_chain(str(cert), str(key))
    return context


def _get(url: str, context: ssl.SSLContext | None, timeout: float = 10):
    with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:
        return resp.status, json.loads(resp.read())


@pytest.fixture
def mtls_server(demo_base, tmp_path):
    certs = make_certs(tmp_path / "certs")
    config = ssl_config(certs, tmp_path / "ssl.config", client_verify=True)
    srv = ServerProcess("--model_name=deeplab", f"--model_base_path={demo_base}",
                        f"--ssl_config_file={config}", log_dir=tmp_path)
    good = _context(certs.ca, certs.client_cert, certs.client_key)
    url = f"https://127.0.0.1:{srv.rest_port}/v1/models/deeplab"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                code, body = _get(url, good)
                if any(v["state"] == "AVAILABLE" for v in body["model_version_status"]):
                    break
            except (OSError, ValueError, KeyError):
                pass
            assert srv.proc.poll() is None, srv.log()
            assert time.monotonic() < deadline, srv.log()[-2000:]
            time.sleep(0.3)
        yield srv, certs, url
    finally:
        assert srv.stop() == 0


def test_rest_over_https_with_client_certificates(mtls_server):
    srv, certs, url = mtls_server
    code, body = _get(url, _context(certs.ca, certs.client_cert, certs.client_key))
    assert code == 200 and body["model_version_status"][0]["state"] == "AVAILABLE"
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        _get(url, _context(certs.ca))  # no client certificate: refused in the handshake
    with pytest.raises(urllib.error.URLError) as err:  # a CA that did not sign the server
        _get(url, _context(certs.wrong_ca, certs.client_cert, certs.client_key))
    assert "CERTIFICATE_VERIFY_FAILED" in str(err.value)
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        _get(f"http://127.0.0.1:{srv.rest_port}/v1/models/deeplab", None, timeout=5)


EXAMPLE = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.jpg"))[0]


def test_client_speaks_tls_and_https_with_client_certificates(mtls_server, tmp_path):
    """`predict` and `bench` (gRPC and REST) and `Client` with --tls-ca, a client
    certificate and key, and a server-name override."""
    from conftest import run_cli

    import tfdeploy
    from tfdeploy.client.tls import TlsConfig

    srv, certs, _ = mtls_server
    tls = ["--tls-ca", certs.ca, "--tls-cert", certs.client_cert, "--tls-key",
           certs.client_key]
    for transport, port in (("grpc", srv.grpc_port), ("rest", srv.rest_port)):
        out = tmp_path / transport
        run_cli("predict", EXAMPLE, "--server", f"127.0.0.1:{port}", "--transport",
                transport, "-o", out, *tls, "--tls-server-name", "localhost")
        assert (out / f"{EXAMPLE.stem}.png").is_file()
    proc = run_cli("bench", EXAMPLE, "--server", f"127.0.0.1:{srv.grpc_port}", "-n", "2",
                   *tls, "--json")
    assert json.loads(proc.stdout)  # both requests answered (exit code 0)
    config = TlsConfig(ca=certs.ca, cert=certs.client_cert, key=certs.client_key)
    for transport, port in (("grpc", srv.grpc_port), ("rest", srv.rest_port)):
        client = tfdeploy.Client(f"127.0.0.1:{port}", transport, tls=config)
        assert client.status() == {1: "AVAILABLE"}
        assert client.predict(EXAMPLE).mode == "P"


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_wrong_ca_or_name_is_refused_at_once_with_a_clear_message(mtls_server, transport):
    from conftest import run_cli

    srv, certs, _ = mtls_server
    port = srv.grpc_port if transport == "grpc" else srv.rest_port
    base = ["predict", EXAMPLE, "--server", f"127.0.0.1:{port}", "--transport", transport,
            "--tls-cert", certs.client_cert, "--tls-key", certs.client_key]
    for extra, says in ((["--tls-ca", certs.wrong_ca], "not signed by the CA given with "
                                                       "--tls-ca"),
                        (["--tls-ca", certs.ca, "--tls-server-name", "other.example"],
                         "TLS handshake with 127.0.0.1")):
        started = time.monotonic()
        proc = run_cli(*base, *extra, check=False)
        assert proc.returncode != 0
        assert says in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
        assert time.monotonic() - started < 25, "a certificate problem was retried"
    # a plain client at a TLS server is told to use TLS, at once (not retried)
    started = time.monotonic()
    proc = run_cli("predict", EXAMPLE, "--server", f"127.0.0.1:{port}", "--transport",
                   transport, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"TLS handshake with 127.0.0.1:{port} failed: the server speaks TLS: give " \
           "--tls-ca" in proc.stderr, proc.stderr
    assert time.monotonic() - started < 25, "a TLS port was retried in plain"


def test_protocol_v2_over_tls_and_https(mtls_server, tmp_path):
    """--protocol v2 over gRPC (TLS) and REST (HTTPS) with a client certificate and a
    server-name override writes the v1 mask; a wrong CA is refused at once with the v1
    transports' clear message; a plain client at the TLS port is refused too."""
    from conftest import run_cli

    srv, certs, _ = mtls_server
    cert = ["--tls-cert", certs.client_cert, "--tls-key", certs.client_key]
    for transport, port in (("grpc", srv.grpc_port), ("rest", srv.rest_port)):
        base = ["predict", EXAMPLE, "--server", f"127.0.0.1:{port}", "--transport",
                transport, *cert]
        masks = {}
        for protocol in ("v1", "v2"):
            out = tmp_path / transport / protocol
            run_cli(*base, "--protocol", protocol, "--tls-ca", certs.ca,
                    "--tls-server-name", "localhost", "-o", out)
            masks[protocol] = (out / f"{EXAMPLE.stem}.png").read_bytes()
        assert masks["v2"] == masks["v1"], transport
        started = time.monotonic()
        proc = run_cli(*base, "--protocol", "v2", "--tls-ca", certs.wrong_ca, check=False)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr
        assert "not signed by the CA given with --tls-ca" in proc.stderr, proc.stderr
        assert time.monotonic() - started < 25, "a certificate problem was retried"
        proc = run_cli("predict", EXAMPLE, "--server", f"127.0.0.1:{port}", "--transport",
                       transport, "--protocol", "v2", "--retries", "0", check=False)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr


def test_only_a_tls_port_is_said_to_speak_tls(mtls_server):
    """A plain client's failed call is called a TLS problem only when the port answers a
    TLS handshake: gRPC's plain-channel failures can say "handshake" (HTTP/2's, from a
    busy plain server) and once made a loaded server's transient failure a fatal 'the
    server speaks TLS'."""
    from concurrent import futures

    import grpc

    from tfdeploy.client.tls import grpc_handshake_error, speaks_tls

    srv, _, _ = mtls_server
    plain = grpc.server(futures.ThreadPoolExecutor(1))
    port = plain.add_insecure_port("127.0.0.1:0")
    plain.start()
    try:
        assert not speaks_tls(f"127.0.0.1:{port}")
        for details in ("failed to connect to all addresses; last error: UNAVAILABLE: "
                        f"ipv4:127.0.0.1:{port}: Socket closed",
                        f"ipv4:127.0.0.1:{port}: Handshake read failed"):
            assert grpc_handshake_error(details, f"127.0.0.1:{port}", None) is None
        for tls_port in (srv.grpc_port, srv.rest_port):
            assert speaks_tls(f"127.0.0.1:{tls_port}")
            said = grpc_handshake_error("failed to connect to all addresses; last error: "
                                        "UNAVAILABLE: Socket closed",
                                        f"127.0.0.1:{tls_port}", None)
            assert said and "the server speaks TLS" in said
        assert not speaks_tls("unix:/tmp/nothing.sock") and not speaks_tls("127.0.0.1:1")
    finally:
        plain.stop(None)
