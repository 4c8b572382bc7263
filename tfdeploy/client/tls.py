"""TLS for the client: gRPC over TLS and REST over HTTPS, with the CA that signed the
server's certificate (``--tls-ca``), an optional client certificate and key (mutual TLS,
for servers started with ``client_verify``) and a server-name override (a certificate
issued for ``serving.internal`` reached as ``10.0.0.5:8500``)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tfdeploy.errors import UserError

if TYPE_CHECKING:  # loaded when TLS is used: plain clients start without them
    import ssl
    import urllib.request

#: What a failed handshake looks like in gRPC's details and in Python's ssl errors.
HANDSHAKE_MARKERS = ("CERTIFICATE_VERIFY_FAILED", "Ssl handshake failed", "SSL_ERROR",
                     "WRONG_VERSION_NUMBER", "certificate verify failed",
                     "TLSV1_ALERT", "SSLV3_ALERT", "tlsv13 alert", "handshake",
                     "Hostname Verification", "hostname mismatch",
                     "Custom verification check failed")


@dataclass(frozen=True)
class TlsConfig:
    """``ca``: PEM file of the CA(s) to trust (None: the system's); ``cert``/``key``: the
    client's certificate and key for mutual TLS; ``server_name``: the name the server's
    certificate must carry, when it differs from the address's host."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise UserError("a client certificate needs its key, and a key its certificate",
                            param="tls_cert")
        for param, path in (("tls_ca", self.ca), ("tls_cert", self.cert),
                            ("tls_key", self.key)):
            if path is not None and not Path(path).is_file():
                raise UserError(f"no such file {path}", param=param)

    def _read(self, path: Path | None) -> bytes | None:
        return Path(path).read_bytes() if path is not None else None

    def grpc_channel(self, address: str, options: list):
        import grpc

        credentials = grpc.ssl_channel_credentials(
            root_certificates=self._read(self.ca), private_key=self._read(self.key),
            certificate_chain=self._read(self.cert))
        if self.server_name:
            options = [*options, ("grpc.ssl_target_name_override", self.server_name)]
        return grpc.secure_channel(address, credentials, options=options)

    @functools.cached_property
    def ssl_context(self) -> ssl.SSLContext:
        import ssl

        try:
            context = ssl.create_default_context(cafile=str(self.ca) if self.ca else None)
            if self.cert is not None:
                context.load_cert_chain(str(self.cert), str(self.key))
        except (ssl.SSLError, OSError) as exc:
            raise UserError(f"cannot load the TLS files ({exc})", param="tls_ca") from None
        return context

    def opener(self) -> urllib.request.OpenerDirector:
        """A urllib opener speaking HTTPS with this config (server name included)."""
        import http.client
        import urllib.request

        context, name = self.ssl_context, self.server_name

        class Connection(http.client.HTTPSConnection):
            def connect(self) -> None:
                http.client.HTTPConnection.connect(self)
                self.sock = context.wrap_socket(self.sock,
                                                server_hostname=name or self.host)

        class Handler(urllib.request.HTTPSHandler):
            def https_open(self, req):
                return self.do_open(Connection, req, context=context)

        return urllib.request.build_opener(Handler())


def handshake_failure(text: str) -> bool:
    return any(marker.lower() in text.lower() for marker in HANDSHAKE_MARKERS)


def grpc_handshake_error(details: str, address: str, tls: TlsConfig | None) -> str | None:
    """The one-line message when a gRPC call's UNAVAILABLE ``details`` is a failed TLS
    handshake, else None.  Only a TLS channel runs one, so only there do the markers
    mean TLS: on a plain channel, gRPC's "handshake" is HTTP/2's or TCP's (a busy plain
    server), and a plain client reaching a TLS server sees just "Socket closed"; that is
    checked by asking the port for a TLS handshake (``speaks_tls``)."""
    if tls is not None:
        return handshake_message(address, details, tls) if handshake_failure(details) else None
    if "socket closed" in details.lower() and speaks_tls(address):
        return handshake_message(address, details, None)
    return None


def speaks_tls(address: str, timeout: float = 3.0) -> bool:
    """Whether ``host:port`` answers a TLS ClientHello as a TLS server does (its
    certificate unchecked: this only tells a TLS port from a plain one)."""
    import socket
    import ssl

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "/" in host:  # unix:..., dns:///..., no port
        return False
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout) as raw, \
                context.wrap_socket(raw):
            return True
    except ssl.SSLError as exc:  # an alert is a TLS server's answer (e.g. wants a client cert)
        return "ALERT" in str(exc).upper()
    except (OSError, ValueError):
        return False


def handshake_message(address: str, detail: str, tls: TlsConfig | None) -> str:
    """One line saying what failed and what to check."""
    lower = detail.lower()
    if "hostname" in lower:
        name = tls.server_name if tls and tls.server_name else address.rsplit(":", 1)[0]
        what = (f"the server's certificate is not issued for {name} (give the name it "
                "carries with --tls-server-name)")
    elif "CERTIFICATE_VERIFY_FAILED" in detail.upper().replace(" ", "_"):
        what = ("the server's certificate is not signed by the CA given with --tls-ca"
                if tls and tls.ca else "the server's certificate is not signed by a CA "
                "this machine trusts (give its CA with --tls-ca)")
        if tls and tls.server_name is None:
            what += ", or is for another name (--tls-server-name)"
    elif tls is None:
        what = "the server speaks TLS: give --tls-ca (and --tls-cert/--tls-key for mTLS)"
    else:
        what = ("the server refused the connection's TLS (a client certificate it accepts "
                "is needed: --tls-cert/--tls-key), or it does not speak TLS")
    return f"TLS handshake with {address} failed: {what}"
