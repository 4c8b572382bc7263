"""`tfdeploy serve --ssl-config-file` (issue 24): a real TLS server started by the CLI,
whose readiness check speaks HTTPS with the right CA, and whose record makes `predict
--name`, `status` and `bench` speak TLS without --tls-* options.  openssl-made
certificates (tests/certs.py)."""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from certs import make_certs, ssl_config
from conftest import ALL_VERSIONS_CONFIG, run_cli
from servers import free_port

from tfdeploy.runtime import state

EXAMPLE = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.jpg"))[0]


def _serve(base, *extra, check: bool = True):
    return run_cli("serve", str(base), "--runtime", "embedded", "--grpc-port", free_port(),
                   "--rest-port", free_port(), "--timeout", "120", *extra, check=check)


def test_serve_with_tls_then_clients_use_it_by_name(demo_base, tmp_path):
    certs = make_certs(tmp_path / "certs")
    config = ssl_config(certs, tmp_path / "ssl.config", client_verify=False)
    out = json.loads(_serve(demo_base, "--name", "secure", "--ssl-config-file", config,
                            "--json").stdout)
    try:
        assert out["versions"] == {"1": "AVAILABLE"}
        assert out["grpc_tls"] and out["rest_tls"]
        assert out["tls_ca"] and Path(out["tls_ca"]).read_text() == certs.ca.read_text()
        rest = f"127.0.0.1:{out['rest_port']}"
        # HTTPS with the CA works; plain HTTP to the same port gets no answer
        context = ssl.create_default_context(cafile=str(certs.ca))
        with urllib.request.urlopen(f"https://{rest}/v1/models/deeplab", timeout=10,
                                    context=context) as resp:
            assert json.loads(resp.read())["model_version_status"][0]["state"] == "AVAILABLE"
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            urllib.request.urlopen(f"http://{rest}/v1/models/deeplab", timeout=5)
        # status speaks HTTPS to it, and says so
        listed = json.loads(run_cli("status", "--json").stdout)
        assert listed[0]["versions"] == {"1": "AVAILABLE"} and listed[0]["hint"] is None
        assert "(TLS)" in run_cli("status").stdout
        # predict and bench by name: TLS from the record, no --tls-* options
        for transport in ("grpc", "rest"):
            masks = tmp_path / f"masks-{transport}"
            run_cli("predict", EXAMPLE, "--name", "secure", "--transport", transport,
                    "-o", masks)
            assert (masks / f"{EXAMPLE.stem}.png").is_file()
        proc = run_cli("bench", EXAMPLE, "--name", "secure", "-n", "2", "--json")
        assert json.loads(proc.stdout)["levels"]
        # the ui page reaches the server over HTTPS too
        from ui_browser import start_ui, stop

        ui, url = start_ui("--name", "secure")
        try:
            with urllib.request.urlopen(f"{url}api/status?model=deeplab", timeout=30) as resp:
                assert json.loads(resp.read())["versions"] == [{"version": 1,
                                                                "state": "AVAILABLE"}]
        finally:
            stop(ui)
        # options given win over the record: a wrong CA is a clear one-line error
        proc = run_cli("predict", EXAMPLE, "--name", "secure", "--tls-ca", certs.wrong_ca,
                       "-o", tmp_path / "never", check=False)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr
        # only our line: not gRPC's C core's handshake line before it
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
        assert "not signed by the CA given with --tls-ca" in lines[0]
    finally:
        run_cli("stop", "secure")
    assert state.load_all() == {}


def test_serve_with_tls_refuses_what_cannot_work_before_starting(demo_base, tmp_path):
    """A --tls-ca that did not sign the certificate, a client_verify config without a
    client certificate, and --tls-* without a config: one-line errors, no server."""
    certs = make_certs(tmp_path / "certs")
    config = ssl_config(certs, tmp_path / "ssl.config", client_verify=False)
    mtls = ssl_config(certs, tmp_path / "mtls.config", client_verify=True)
    for extra, says in (
            (["--ssl-config-file", config, "--tls-ca", certs.wrong_ca],
             "did not sign the server certificate"),
            (["--ssl-config-file", mtls], "asks clients for a certificate (client_verify)"),
            (["--tls-ca", certs.ca], "--tls-ca: needs --ssl-config-file")):
        proc = _serve(demo_base, *extra, check=False)
        assert proc.returncode == 2, proc.stderr
        assert says in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert state.load_all() == {}


def test_serve_with_mutual_tls_and_a_server_name(demo_base, tmp_path):
    """client_verify: serve takes the client certificate clients use; a name the
    certificate does not carry fails the readiness check at once, saying which option
    fixes it, and stops the server."""
    certs = make_certs(tmp_path / "certs")
    mtls = ssl_config(certs, tmp_path / "mtls.config", client_verify=True)
    client = ["--tls-cert", certs.client_cert, "--tls-key", certs.client_key]
    proc = _serve(demo_base, "--name", "wrongname", "--ssl-config-file", mtls, *client,
                  "--tls-server-name", "other.example", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--tls-server-name" in proc.stderr, proc.stderr
    assert state.load_all() == {}
    out = json.loads(_serve(demo_base, "--name", "mutual", "--ssl-config-file", mtls,
                            *client, "--tls-server-name", "localhost", "--json").stdout)
    try:
        assert out["versions"] == {"1": "AVAILABLE"}
        masks = tmp_path / "masks"
        run_cli("predict", EXAMPLE, "--name", "mutual", "--transport", "rest", "-o", masks)
        assert (masks / f"{EXAMPLE.stem}.png").is_file()
    finally:
        run_cli("stop", "mutual")


def test_promote_and_rollback_against_a_tls_server(demo_base, tmp_path):
    """promote/rollback of a server `serve --ssl-config-file` started: by name they use
    the record's TLS for the comparison and for the reload on the local UNIX socket
    (under TLS too); with --server, the --tls-* options as predict takes them; a wrong
    CA is a one-line error and the label stays."""
    import shutil

    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    import tfdeploy
    from tfdeploy.rollout.labels import _flags

    def config_label() -> int:
        parsed = text_format.Parse(config.read_text(),
                                   model_server_config_pb2.ModelServerConfig())
        return parsed.model_config_list.config[0].version_labels["stable"]

    certs = make_certs(tmp_path / "certs")
    ssl_file = ssl_config(certs, tmp_path / "ssl.config", client_verify=False)
    base = tmp_path / "deeplab"
    for version in ("1", "2"):
        shutil.copytree(demo_base / "1", base / version)
    config = tmp_path / "models.config"
    config.write_text(ALL_VERSIONS_CONFIG.format(base=base))
    name = "secure-rollout"
    server = tfdeploy.serve(None, runtime="embedded", name=name, grpc_port=0, rest_port=0,
                            model_config_file=config, config_poll=1,
                            ssl_config_file=ssl_file)
    try:
        record = state.load_all()[name]
        assert record.grpc_tls
        socket = _flags(record.command)["grpc_socket_path"]
        deadline = time.monotonic() + 180
        while server.client().status() != {1: "AVAILABLE", 2: "AVAILABLE"}:
            assert time.monotonic() < deadline, server.client().status()
            time.sleep(0.5)
        # by name: TLS from the record, reloads over the TLS UNIX socket
        run_cli("promote", "deeplab", "1", "--name", name)
        assert config_label() == 1
        result = json.loads(run_cli("promote", "deeplab", "2", "--name", name, "--sample",
                                    EXAMPLE, "--json").stdout)
        assert result["moved"] and result["previous"] == 1 and result["agreement"] == 1.0
        assert [Path(i["path"]).name for i in result["images"]] == [EXAMPLE.name]
        assert set(result["p50_ms"]) == {"1", "2"} and config_label() == 2
        # --server with --tls-* options: the gate over TLS to the public gRPC port
        dry = json.loads(run_cli(
            "promote", "deeplab", "1", "--server", server.grpc_address, "--config", config,
            "--tls-ca", certs.ca, "--sample", EXAMPLE, "--dry-run", "--json").stdout)
        assert (dry["moved"], dry["previous"], dry["agreement"]) == (False, 2, 1.0)
        # a wrong CA: one line naming the option, and the label stays
        for command in (["promote", "deeplab", "1", "--sample", EXAMPLE], ["rollback",
                                                                          "deeplab"]):
            proc = run_cli(*command, "--name", name, "--tls-ca", certs.wrong_ca,
                           check=False)
            assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
            # only our line: not gRPC's C core's handshake line before it
            lines = proc.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
            assert "not signed by the CA given with --tls-ca" in lines[0]
        assert config_label() == 2
        # rollback by --server: the local socket, the CA and the server's name given
        back = run_cli("rollback", "deeplab", "--server", f"unix:{socket}", "--config",
                       config, "--tls-ca", certs.ca, "--tls-server-name", "127.0.0.1")
        assert back.stdout.strip() == "label stable of deeplab: version 2 -> 1"
        assert config_label() == 1
    finally:
        server.stop()
    assert state.load_all() == {}
