"""Open Inference Protocol (KServe v2) transport over REST: ``/v2/models/...`` with the
binary-tensor extension, so ``tfdeploy predict --protocol v2`` talks to the embedded
server's v2 API and to the other servers that speak it (Triton, OpenVINO Model Server,
KServe runtimes, MLServer).  Standard library HTTP, like the v1 REST transport.

The protocol has no model status: ``status`` reports every version the model's metadata
lists as AVAILABLE.  Versions are numbers only (the protocol has no labels).  A signature
other than the default one is asked for with the ``signature_name`` parameter, which the
embedded server honours; its metadata lists every signature in the ``signatures``
parameter (other servers list only their one set of tensors, taken as the default).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping

import numpy as np

from tfdeploy.client.base import ClientError, Transport
from tfdeploy.client.defaults import DEFAULT_TIMEOUT
from tfdeploy.tfs import protos, v2
from tfdeploy.tfs.codes import Code, StatusError
from tfdeploy.tfs.names import MASK_PNG, SERVING_DEFAULT
from tfdeploy.tfs.saved_model import Signature


class V2RestTransport(Transport):
    name = "rest"
    protocol = "v2"

    def __init__(self, address: str, timeout: float = DEFAULT_TIMEOUT):
        self.address, self.timeout = address, timeout

    def _http(self, method: str, path: str, body: bytes | None = None,
              headers: dict | None = None) -> tuple[bytes, int | None]:
        url = f"http://{self.address}{path}"
        req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                length = resp.headers.get("Inference-Header-Content-Length")
                return resp.read(), (int(length) if length is not None else None)
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("error", exc.reason)
            except (ValueError, AttributeError):
                message = str(exc.reason)
            raise ClientError(Code.from_http(exc.code), message, self.address) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            refused = isinstance(reason, OSError) and not isinstance(reason, TimeoutError)
            raise ClientError(Code.UNAVAILABLE, f"cannot reach {url}: {reason}",
                              self.address, refused=refused) from None
        except Exception as exc:  # not HTTP/1.x (a gRPC port?)
            raise ClientError(Code.UNAVAILABLE, f"{url} did not answer HTTP/1.1 "
                              f"({type(exc).__name__}: a gRPC port?)", self.address,
                              retryable=False) from None

    def _path(self, model: str, version) -> str:
        if isinstance(version, str):
            raise ClientError(Code.INVALID_ARGUMENT, "the v2 protocol has no version labels: "
                              "give a version number", self.address, retryable=False)
        name = urllib.parse.quote(model, safe="")
        return f"/v2/models/{name}" + (f"/versions/{version}" if version is not None else "")

    def _meta(self, model: str, version) -> dict:
        raw, _ = self._http("GET", self._path(model, version))
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise ClientError(Code.INTERNAL, f"unreadable metadata ({exc})",
                              self.address) from None

    def metadata(self, model: str, version: int | None = None) -> dict[str, Signature]:
        meta = self._meta(model, version)

        def table(tensors: list) -> dict:
            return {t["name"]: (protos.dtype_name(v2.enum_of_datatype(t["datatype"])),
                                [d if d >= 0 else None for d in t["shape"]])
                    for t in tensors}

        try:
            signatures = (meta.get("parameters") or {}).get("signatures")
            if not isinstance(signatures, dict):
                signatures = {SERVING_DEFAULT: meta}
            return {key: Signature(table(s["inputs"]), table(s["outputs"]))
                    for key, s in signatures.items()}
        except (KeyError, TypeError, StatusError) as exc:
            raise ClientError(Code.INTERNAL, f"unreadable metadata ({exc})",
                              self.address) from None

    def status(self, model: str, version: int | None = None) -> dict[int, str]:
        meta = self._meta(model, version)
        return {int(v): "AVAILABLE" for v in meta.get("versions", [])
                if str(v).isdigit() and (version is None or int(v) == version)}

    def _infer(self, model: str, version, signature: str, inputs: Mapping[str, np.ndarray],
               outputs: list[str] | None) -> dict[str, np.ndarray]:
        tensors, blobs = [], []
        for key, value in inputs.items():
            array = np.asarray(value)
            if array.dtype.kind in "SU":
                array = array.astype(object)
            raw = v2.to_raw(array)
            tensors.append({"name": key, "datatype": v2.datatype_of(array),
                            "shape": list(array.shape),
                            "parameters": {"binary_data_size": len(raw)}})
            blobs.append(raw)
        header: dict = {"inputs": tensors, "parameters": {"binary_data_output": True}}
        if signature and signature != SERVING_DEFAULT:
            header["parameters"][v2.SIGNATURE_PARAMETER] = signature
        if outputs:
            header["outputs"] = [{"name": k, "parameters": {"binary_data": True}}
                                 for k in outputs]
        head = json.dumps(header, separators=(",", ":")).encode()
        raw, length = self._http(
            "POST", self._path(model, version) + "/infer", b"".join([head, *blobs]),
            {"Inference-Header-Content-Length": str(len(head)),
             "Content-Type": "application/octet-stream"})
        try:
            return parse_response(raw, length)
        except (KeyError, TypeError, ValueError, StatusError) as exc:
            raise ClientError(Code.INTERNAL, f"unexpected response: {exc}",
                              self.address) from None

    def predict(self, model: str, signature: str, inputs: Mapping[str, np.ndarray],
                version: int | None = None, outputs: list[str] | None = None,
                output_dtypes: Mapping[str, str] | None = None) -> dict[str, np.ndarray]:
        return self._infer(model, version, signature, inputs, outputs)

    def predict_png(self, model: str, image: bytes, version: int | None = None,
                    signature: str = SERVING_DEFAULT) -> bytes:
        out = self._infer(model, version, signature,
                          {"image_bytes": np.array([image], dtype=object)}, [MASK_PNG])
        mask = out.get(MASK_PNG)
        if mask is None or mask.size == 0 or not isinstance(mask.flat[0], bytes):
            raise ClientError(Code.INTERNAL, f"response has no {MASK_PNG} output",
                              self.address)
        return mask.flat[0]


def parse_response(raw: bytes, json_length: int | None) -> dict[str, np.ndarray]:
    """The outputs of a v2 infer response, JSON or binary tensors."""
    head = json.loads(raw[:json_length] if json_length is not None else raw)
    binary = memoryview(raw)[json_length:] if json_length is not None else memoryview(b"")
    out, offset = {}, 0
    for tensor in head["outputs"]:
        shape = tuple(tensor["shape"])
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            out[tensor["name"]] = v2.from_raw(binary[offset:offset + size],
                                              tensor["datatype"], shape, tensor["name"])
            offset += size
        else:
            out[tensor["name"]] = v2.from_json_data(tensor["data"], tensor["datatype"],
                                                    shape, tensor["name"])
    return out
