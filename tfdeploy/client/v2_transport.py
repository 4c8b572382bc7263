"""Open Inference Protocol (KServe v2) transports: REST (``/v2/models/...`` with the
binary-tensor extension) and gRPC (``inference.GRPCInferenceService``, in
``client/v2_grpc_transport.py``), so ``tfdeploy predict --protocol v2`` talks to the
embedded server's v2 API and to the other servers that speak it (Triton, OpenVINO Model
Server, KServe runtimes, MLServer).  ``--transport`` picks REST or gRPC as it does for v1;
``--tls-*`` make them HTTPS / gRPC over TLS.

The protocol has no model status: ``status`` reports every version the model's metadata
lists as AVAILABLE.  Versions are numbers only (the protocol has no labels).  A signature
other than the default one is asked for with the ``signature_name`` parameter, which the
embedded server honours; its REST metadata lists every signature in the ``signatures``
parameter.  gRPC metadata has no parameters, so over gRPC only the default signature is
listed and another one named with ``--signature`` is sent as asked (the server checks it).
"""

from __future__ import annotations

import abc
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping

import numpy as np

from tfdeploy.client.base import ClientError, Transport
from tfdeploy.client.rest_transport import CONNECTION_ERRORS, HttpEndpoint, connection_error
from tfdeploy.tfs import protos, v2
from tfdeploy.tfs.codes import Code, StatusError
from tfdeploy.tfs.names import MASK_PNG, SERVING_DEFAULT
from tfdeploy.tfs.saved_model import Signature


class V2Transport(Transport):
    """What both v2 transports share: metadata read as the protocol writes it, versions as
    numbers, predictions as infer calls; subclasses fetch metadata (``_meta``) and run one
    infer call (``_infer``)."""

    protocol = "v2"
    #: False when the metadata may list only the default signature (gRPC: the protocol's
    #: ModelMetadataResponse has no parameters), so a named one is sent as asked.
    lists_every_signature = True

    address: str

    @abc.abstractmethod
    def _meta(self, model: str, version: int | None) -> dict:
        """The model metadata as the REST API writes it (name, versions, inputs, outputs,
        parameters)."""

    @abc.abstractmethod
    def _infer(self, model: str, version: int | None, signature: str,
               inputs: Mapping[str, np.ndarray],
               outputs: list[str] | None) -> dict[str, np.ndarray]:
        """One infer call: the outputs as numpy arrays."""

    def _check_version(self, version) -> None:
        if isinstance(version, str):
            raise ClientError(Code.INVALID_ARGUMENT, "the v2 protocol has no version labels: "
                              "give a version number", self.address, retryable=False)

    def metadata(self, model: str, version: int | None = None) -> dict[str, Signature]:
        self._check_version(version)
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
        self._check_version(version)
        meta = self._meta(model, version)
        return {int(v): "AVAILABLE" for v in meta.get("versions", [])
                if str(v).isdigit() and (version is None or int(v) == version)}

    def predict(self, model: str, signature: str, inputs: Mapping[str, np.ndarray],
                version: int | None = None, outputs: list[str] | None = None,
                output_dtypes: Mapping[str, str] | None = None) -> dict[str, np.ndarray]:
        self._check_version(version)
        return self._infer(model, version, signature, inputs, outputs)

    def predict_png(self, model: str, image: bytes, version: int | None = None,
                    signature: str = SERVING_DEFAULT) -> bytes:
        self._check_version(version)
        out = self._infer(model, version, signature,
                          {"image_bytes": np.array([image], dtype=object)}, [MASK_PNG])
        mask = out.get(MASK_PNG)
        if mask is None or mask.size == 0 or not isinstance(mask.flat[0], bytes):
            raise ClientError(Code.INTERNAL, f"response has no {MASK_PNG} output",
                              self.address)
        return mask.flat[0]


class V2RestTransport(HttpEndpoint, V2Transport):
    name = "rest"

    def _http(self, method: str, path: str, body: bytes | None = None,
              headers: dict | None = None) -> tuple[bytes, int | None]:
        url = self._url(path)
        req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
        try:
            with self._open(req, timeout=self.timeout) as resp:
                length = resp.headers.get("Inference-Header-Content-Length")
                return resp.read(), (int(length) if length is not None else None)
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("error", exc.reason)
            except (ValueError, AttributeError):
                message = str(exc.reason)
            raise ClientError(Code.from_http(exc.code), message, self.address) from None
        except CONNECTION_ERRORS as exc:
            raise connection_error(exc, url, self.address, self.tls) from None

    def _path(self, model: str, version) -> str:
        name = urllib.parse.quote(model, safe="")
        return f"/v2/models/{name}" + (f"/versions/{version}" if version is not None else "")

    def _meta(self, model: str, version) -> dict:
        raw, _ = self._http("GET", self._path(model, version))
        try:
            meta = json.loads(raw)
        except ValueError as exc:
            raise ClientError(Code.INTERNAL, f"unreadable metadata ({exc})",
                              self.address) from None
        if not isinstance(meta, dict):
            raise ClientError(Code.INTERNAL, "unreadable metadata (not a JSON object)",
                              self.address)
        return meta

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
