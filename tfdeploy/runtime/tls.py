"""TLS of a server ``tfdeploy serve`` started: which CA its clients trust, and the
TlsConfig every client command (readiness check, ``status``, ``predict``, ``bench``,
``ui``) gets from its record, so none of them needs ``--tls-*`` flags.

The SSLConfig (``--ssl_config_file``) holds the server's key and certificate and, in
``custom_ca``, the CA that *client* certificates must chain to; it does not say which CA
signed the server's own certificate.  ``serve --tls-ca`` says so; without it the first
of these that verifies the server's certificate is trusted: ``custom_ca`` (one CA for
both sides, the usual set-up), else the certificate itself (self-signed, or a chain
whose root it carries).  Verification is checked here, before the server starts, with a
TLS handshake in memory, so a certificate no candidate verifies is a clear error rather
than a readiness check that never succeeds.
"""

from __future__ import annotations

import os
import shutil
import ssl
import tempfile
from pathlib import Path

from tfdeploy.client.tls import TlsConfig
from tfdeploy.errors import UserError
from tfdeploy.runtime.state import ServerRecord, ensure_state_dir, private_file


def _handshake(ca_pem: str, key_pem: str, cert_pem: str) -> bool:
    """Whether a client trusting ``ca_pem`` accepts a server presenting ``cert_pem``
    (name checks aside: the address is only known later); no socket involved."""
    directory = tempfile.mkdtemp(prefix="tfdeploy-tls-check-")
    try:
        key, cert = os.path.join(directory, "key.pem"), os.path.join(directory, "cert.pem")
        for path, text in ((key, key_pem), (cert, cert_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise UserError(f"the server_key and server_cert of the SSL config do not load "
                        f"({exc})", param="ssl_config_file") from None
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    try:
        client.load_verify_locations(cadata=ca_pem)
    except (ssl.SSLError, ValueError):
        return False
    pipes = [(ssl.MemoryBIO(), ssl.MemoryBIO()) for _ in range(2)]
    c = client.wrap_bio(pipes[0][0], pipes[0][1], server_side=False)
    s = server.wrap_bio(pipes[1][0], pipes[1][1], server_side=True)
    done = {"c": False, "s": False}
    for _ in range(20):  # a TLS 1.3 handshake needs a few round trips
        for key, end in (("c", c), ("s", s)):
            if not done[key]:
                try:
                    end.do_handshake()
                    done[key] = True
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    pass
                except ssl.SSLError:
                    return False
        # client out -> server in, server out -> client in
        pipes[1][0].write(pipes[0][1].read())
        pipes[0][0].write(pipes[1][1].read())
        if all(done.values()):
            return True
    return False


def server_trust(ssl_config_file: Path, tls_ca: Path | None) -> tuple[str, str]:
    """(PEM text clients of the server trust, where it came from) for a server started
    with ``ssl_config_file``; ``tls_ca``: the CA the user says signed its certificate."""
    from tfdeploy.serving.config import ssl_config

    config = ssl_config(ssl_config_file)
    candidates = []
    if tls_ca is not None:
        candidates.append((Path(tls_ca).read_text(), f"--tls-ca {tls_ca}"))
    else:
        if config.custom_ca:
            candidates.append((config.custom_ca, "the SSL config's custom_ca"))
        candidates.append((config.server_cert, "the server's own certificate"))
    for pem, source in candidates:
        if _handshake(pem, config.server_key, config.server_cert):
            return pem, source
    if tls_ca is not None:
        raise UserError(f"{tls_ca} did not sign the server certificate of "
                        f"{ssl_config_file} (server_cert)", param="tls_ca")
    raise UserError(f"neither custom_ca nor the certificate itself verifies the "
                    f"server_cert of {ssl_config_file}: give the CA that signed it with "
                    "--tls-ca", param="tls_ca")


def client_verify(ssl_config_file: Path) -> bool:
    """Whether the server asks clients for a certificate (SSLConfig ``client_verify``)."""
    from tfdeploy.serving.config import ssl_config

    return bool(ssl_config(ssl_config_file).client_verify)


def write_trust(name: str, pem: str) -> Path:
    """The trusted PEM as a 0600 file of the state directory (``tls/NAME.ca.pem``), which
    the server's record names."""
    path = ensure_state_dir("tls") / f"{name}.ca.pem"
    with os.fdopen(private_file(path), "w") as fh:
        fh.write(pem)
    return path


def record_tls(record: ServerRecord | None, transport: str) -> TlsConfig | None:
    """The TlsConfig a client of ``record``'s ``transport`` (grpc or rest) uses: None
    when that front end speaks plain (tensorflow_model_server's REST always does)."""
    if record is None:
        return None
    on = record.grpc_tls if transport == "grpc" else record.rest_tls
    if not on:
        return None
    return TlsConfig(ca=_path(record.tls_ca), cert=_path(record.tls_cert),
                     key=_path(record.tls_key), server_name=record.tls_server_name or None)


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None
