"""REST transport: TF Serving's HTTP/JSON API (``/v1/models/...``) with the standard
library's HTTP client, so gRPC-only users never load it."""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import TYPE_CHECKING

from tfdeploy.client.base import ClientError, Transport
from tfdeploy.client.defaults import DEFAULT_TIMEOUT
from tfdeploy.client.tls import TlsConfig, handshake_failure, handshake_message, speaks_tls
from tfdeploy.tfs import json_tensors, protos, requests
from tfdeploy.tfs.codes import Code, StatusError
from tfdeploy.tfs.names import MASK_PNG, SERVING_DEFAULT
from tfdeploy.tfs.saved_model import Signature, signature

if TYPE_CHECKING:
    import numpy as np


#: What a failed HTTP(S) exchange raises below the HTTP status: no connection, a TLS
#: handshake refused, or an answer that is not HTTP/1.x.
CONNECTION_ERRORS = (urllib.error.URLError, ConnectionError, TimeoutError, ssl.SSLError,
                     http.client.HTTPException)


def connection_error(exc: Exception, url: str, address: str,
                     tls: TlsConfig | None) -> ClientError:
    """The ClientError of one of ``CONNECTION_ERRORS``: a certificate problem said plainly
    and not retried; nothing listening is ``refused``; an HTTP/2 (gRPC) port is the wrong
    transport, not retried either.  Shared by the v1 and v2 REST transports."""
    if isinstance(exc, http.client.HTTPException):  # not HTTP/1.x: e.g. a gRPC port
        if tls is None and speaks_tls(address):  # or an HTTPS port, reached in plain HTTP
            return ClientError(Code.UNAVAILABLE, handshake_message(address, str(exc), None),
                               address, retryable=False)
        return ClientError(Code.UNAVAILABLE, f"{url} did not answer HTTP/1.1 "
                           f"({type(exc).__name__}: a gRPC port?)", address,
                           retryable=False)
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, ssl.SSLError) or (tls and handshake_failure(str(reason))):
        return ClientError(Code.UNAVAILABLE, handshake_message(address, str(reason), tls),
                           address, retryable=False)
    refused = isinstance(reason, OSError) and not isinstance(reason, TimeoutError)
    return ClientError(Code.UNAVAILABLE, f"cannot reach {url}: {reason}", address,
                       refused=refused)


class HttpEndpoint:
    """One HTTP(S) endpoint as both REST transports (v1 here, v2 in ``v2_transport.py``)
    reach it: the address, the per-call timeout, and the opener, which is TLS-aware only
    when ``tls`` is given so plain-HTTP users never build an SSL context."""

    def __init__(self, address: str, timeout: float = DEFAULT_TIMEOUT,
                 tls: TlsConfig | None = None):
        self.address, self.timeout, self.tls = address, timeout, tls
        self._open = tls.opener().open if tls is not None else urllib.request.urlopen

    def _url(self, path: str) -> str:
        """``path`` on this endpoint: ``https`` exactly when TLS is configured."""
        return f"{'https' if self.tls else 'http'}://{self.address}{path}"


class RestTransport(HttpEndpoint, Transport):
    name = "rest"

    def _http(self, method: str, path: str, body: dict | None = None):
        url = self._url(path)
        data = json.dumps(body, separators=(",", ":")).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with self._open(req, timeout=self.timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("error", exc.reason)
            except ValueError:
                message = str(exc.reason)
            raise ClientError(Code.from_http(exc.code), message, self.address) from None
        except CONNECTION_ERRORS as exc:
            raise connection_error(exc, url, self.address, self.tls) from None
        except ValueError as exc:  # not JSON: not a TF Serving REST endpoint
            raise ClientError(Code.INTERNAL, f"{url} answered with non-JSON ({exc})",
                              self.address) from None

    @staticmethod
    def _path(model: str, version: int | str | None) -> str:
        """A version number (``/versions/N``), a label (a str: ``/labels/NAME``) or the
        latest."""
        if isinstance(version, str):
            return f"/v1/models/{model}/labels/{urllib.parse.quote(version, safe='')}"
        return f"/v1/models/{model}" + (f"/versions/{version}" if version is not None else "")

    def metadata(self, model: str, version: int | None = None) -> dict[str, Signature]:
        body = self._http("GET", self._path(model, version) + "/metadata")
        meta_pb2 = protos.module("tensorflow_serving.apis.get_model_metadata_pb2")
        try:
            sigs = json_tensors.json_to_message(body["metadata"]["signature_def"],
                                                meta_pb2.SignatureDefMap())
        except (KeyError, TypeError, ValueError) as exc:
            raise ClientError(Code.INTERNAL, f"unreadable metadata ({exc})",
                              self.address) from None
        return {k: signature(sd) for k, sd in sigs.signature_def.items()}

    def status(self, model: str, version: int | None = None) -> dict[int, str]:
        body = self._http("GET", self._path(model, version))
        status_pb2 = protos.module("tensorflow_serving.apis.get_model_status_pb2")
        try:
            response = json_tensors.json_to_message(body, status_pb2.GetModelStatusResponse())
        except (TypeError, ValueError) as exc:
            raise ClientError(Code.INTERNAL, f"unreadable status ({exc})",
                              self.address) from None
        return requests.version_states(response)

    def predict(self, model: str, signature: str, inputs: Mapping[str, np.ndarray],
                version: int | None = None, outputs: list[str] | None = None,
                output_dtypes: Mapping[str, str] | None = None) -> dict[str, np.ndarray]:
        body = json_tensors.predict_body(signature, inputs)
        result = self._http("POST", self._path(model, version) + ":predict", body)
        dtypes = {k: protos.dtype_enum(v) for k, v in (output_dtypes or {}).items()}
        try:
            return json_tensors.parse_outputs(result, dtypes, outputs)
        except StatusError as exc:
            raise ClientError(Code.INTERNAL, f"unexpected response: {exc.message}",
                              self.address) from None

    def predict_png(self, model: str, image: bytes, version: int | None = None,
                    signature: str = SERVING_DEFAULT) -> bytes:
        body = json_tensors.encoded_image_body(signature, [image])
        result = self._http("POST", self._path(model, version) + ":predict", body)
        try:
            mask = json_tensors.decode_bytes(json_tensors.first_row_value(result, MASK_PNG))
        except (KeyError, IndexError, TypeError, StatusError):
            mask = None
        if not isinstance(mask, bytes):
            raise ClientError(Code.INTERNAL, f"response has no {MASK_PNG} output",
                              self.address)
        return mask
