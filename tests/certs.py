"""Certificates for TLS tests, made with the openssl CLI: a CA, a server certificate for
127.0.0.1 / localhost and a client certificate signed by it, and a second CA that signed
neither (the "wrong CA")."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class Certs:
    ca: Path
    server_key: Path
    server_cert: Path
    client_key: Path
    client_cert: Path
    wrong_ca: Path


def _run(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_certs(directory: Path) -> Certs:
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed: no certificates to test TLS with")
    directory.mkdir(parents=True, exist_ok=True)
    d = directory

    def ca(name: str) -> None:
        _run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout",
             str(d / f"{name}.key"), "-out", str(d / f"{name}.pem"), "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")

    def leaf(name: str, ext: str) -> None:
        _run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / f"{name}.key"),
             "-out", str(d / f"{name}.csr"), "-subj", f"/CN={name}")
        (d / f"{name}.ext").write_text(ext)
        _run("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.pem"),
             "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "1",
             "-out", str(d / f"{name}.pem"), "-extfile", str(d / f"{name}.ext"))

    ca("ca")
    ca("wrong-ca")
    leaf("server", "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                   "extendedKeyUsage=serverAuth\n")
    leaf("client", "extendedKeyUsage=clientAuth\n")
    return Certs(d / "ca.pem", d / "server.key", d / "server.pem", d / "client.key",
                 d / "client.pem", d / "wrong-ca.pem")


def ssl_config(certs: Certs, path: Path, client_verify: bool) -> Path:
    """The official SSLConfig text for tensorflow_model_server's --ssl_config_file."""
    import json

    path.write_text(f"server_key: {json.dumps(certs.server_key.read_text())}\n"
                    f"server_cert: {json.dumps(certs.server_cert.read_text())}\n"
                    f"custom_ca: {json.dumps(certs.ca.read_text())}\n"
                    f"client_verify: {str(client_verify).lower()}\n")
    return path
