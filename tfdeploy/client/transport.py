"""gRPC and REST transports to TF Serving (or our embedded server), TensorFlow-free.

Both expose the same calls: ``metadata``, ``predict`` on numpy data, and ``predict_png``
(encoded image in, palette PNG mask out), which needs no numpy at all.  Both retry with
exponential backoff when
the server is UNAVAILABLE (starting, restarting, swapping), and both accept several
endpoints, spreading requests round robin and skipping one that fails.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tfdeploy.client import protos

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger("tfdeploy.client")


class ClientError(Exception):
    """A request that failed; ``code`` is the gRPC status name (or HTTP-derived)."""

    def __init__(self, code: str, message: str, endpoint: str = ""):
        super().__init__(f"{code}: {message}" if code else message)
        self.code, self.message, self.endpoint = code, message, endpoint


@dataclass
class Signature:
    """Inputs and outputs of a served signature: name -> (dtype name, shape or None)."""

    inputs: dict[str, tuple[str, list | None]]
    outputs: dict[str, tuple[str, list | None]]


@dataclass
class Endpoints:
    """Round-robin over several ``host:port`` endpoints; failing ones are skipped."""

    addresses: list[str]
    counts: dict[str, int] = field(default_factory=dict)
    _cycle: itertools.cycle = field(init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _down_until: dict[str, float] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.addresses:
            raise ValueError("no server endpoint given")
        self._cycle = itertools.cycle(self.addresses)
        self.counts = dict.fromkeys(self.addresses, 0)

    def pick(self) -> str:
        with self._lock:
            now = time.monotonic()
            for _ in range(len(self.addresses)):
                address = next(self._cycle)
                if self._down_until.get(address, 0) <= now:
                    return address
            return next(self._cycle)  # all marked down: try anyway

    def mark_down(self, address: str, seconds: float = 5.0) -> None:
        if len(self.addresses) > 1:
            with self._lock:
                if self._down_until.get(address, 0) <= time.monotonic():
                    log.warning("endpoint %s failed; using the others for %.0fs",
                                address, seconds)
                self._down_until[address] = time.monotonic() + seconds

    def served(self, address: str) -> None:
        with self._lock:
            self.counts[address] += 1


# Predict is idempotent, so these are retried.  CANCELLED is what a request gets from a gRPC
# server that is shutting down as it arrives (our client never cancels its own calls).
RETRYABLE = {"UNAVAILABLE", "CANCELLED"}


class _Base:
    def __init__(self, endpoints: list[str], timeout: float = 60.0, retries: int = 4,
                 backoff: float = 0.2):
        self.endpoints = Endpoints(list(endpoints))
        self.timeout, self.retries, self.backoff = timeout, retries, backoff

    def _with_retries(self, call):
        """Call on an endpoint; on a RETRYABLE answer try the next one (several endpoints)
        or back off exponentially and try again (one endpoint), ``retries`` times at most."""
        failures = 0
        budget = self.retries + len(self.endpoints.addresses) - 1
        while True:
            address = self.endpoints.pick()
            try:
                result = call(address)
            except ClientError as exc:
                if exc.code not in RETRYABLE or failures >= budget:
                    raise
                failures += 1
                self.endpoints.mark_down(address)
                if len(self.endpoints.addresses) == 1:
                    time.sleep(self.backoff * 2 ** (failures - 1))
                continue
            self.endpoints.served(address)
            return result


class GrpcTransport(_Base):
    name = "grpc"

    def __init__(self, endpoints: list[str], **kw):
        super().__init__(endpoints, **kw)
        import grpc

        self._grpc = grpc
        self._predict_pb2 = protos.module("tensorflow_serving.apis.predict_pb2")
        self._meta_pb2 = protos.module("tensorflow_serving.apis.get_model_metadata_pb2")
        stubs = protos.module("tensorflow_serving.apis.prediction_service_pb2_grpc")
        opts = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
        self._stubs = {a: stubs.PredictionServiceStub(grpc.insecure_channel(a, options=opts))
                       for a in self.endpoints.addresses}

    def _rpc(self, address: str, method: str, request):
        try:
            return getattr(self._stubs[address], method)(request, timeout=self.timeout)
        except self._grpc.RpcError as exc:
            raise ClientError(exc.code().name, exc.details() or str(exc.code()), address) \
                from None

    @staticmethod
    def _spec(spec, model: str, version: int | None, signature: str = "") -> None:
        spec.name = model
        if version is not None:
            spec.version.value = version
        if signature:
            spec.signature_name = signature

    def metadata(self, model: str, version: int | None = None) -> dict[str, Signature]:
        request = self._meta_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._spec(request.model_spec, model, version)
        response = self._with_retries(lambda a: self._rpc(a, "GetModelMetadata", request))
        sigs = self._meta_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(sigs)

        def table(infos):
            return {k: (protos.dtype_name(v.dtype), None if v.tensor_shape.unknown_rank
                        else [d.size for d in v.tensor_shape.dim]) for k, v in infos.items()}

        return {k: Signature(table(sd.inputs), table(sd.outputs))
                for k, sd in sigs.signature_def.items()}

    def predict(self, model: str, signature: str, inputs: dict[str, np.ndarray],
                version: int | None = None, outputs: list[str] | None = None
                ) -> dict[str, np.ndarray]:
        from tfdeploy.client import tensors

        request = self._predict_pb2.PredictRequest()
        self._spec(request.model_spec, model, version, signature)
        for k, v in inputs.items():
            request.inputs[k].CopyFrom(tensors.to_proto(v))
        request.output_filter.extend(outputs or [])
        response = self._with_retries(lambda a: self._rpc(a, "Predict", request))
        return {k: tensors.from_proto(v) for k, v in response.outputs.items()}

    def predict_png(self, model: str, image: bytes, version: int | None = None,
                    signature: str = "serving_default") -> bytes:
        """One encoded image -> its palette PNG mask (``mask_png``), built without numpy."""
        request = self._predict_pb2.PredictRequest()
        self._spec(request.model_spec, model, version, signature)
        tensor = request.inputs["image_bytes"]
        tensor.dtype = 7  # DT_STRING
        tensor.tensor_shape.dim.add(size=1)
        tensor.string_val.append(image)
        request.output_filter.append("mask_png")
        response = self._with_retries(lambda a: self._rpc(a, "Predict", request))
        values = response.outputs["mask_png"].string_val
        if len(values) != 1:
            raise ClientError("INTERNAL", f"expected one mask_png, got {len(values)}")
        return values[0]

    def predict_async(self, model: str, signature: str, inputs: dict[str, np.ndarray],
                      version: int | None = None, outputs: list[str] | None = None):
        """Send without waiting: returns a ``concurrent.futures.Future`` of the outputs.
        Uses gRPC's own asynchronous call (``Predict.future``), no thread per request;
        a first UNAVAILABLE answer is retried (synchronously) with the usual backoff."""
        from concurrent.futures import Future

        from tfdeploy.client import tensors

        request = self._predict_pb2.PredictRequest()
        self._spec(request.model_spec, model, version, signature)
        for k, v in inputs.items():
            request.inputs[k].CopyFrom(tensors.to_proto(v))
        request.output_filter.extend(outputs or [])
        address = self.endpoints.pick()
        call = self._stubs[address].Predict.future(request, timeout=self.timeout)
        result: Future = Future()

        def done(call_future) -> None:
            try:
                response = call_future.result()
                self.endpoints.served(address)
                result.set_result({k: tensors.from_proto(v)
                                   for k, v in response.outputs.items()})
            except self._grpc.RpcError as exc:
                if exc.code().name in RETRYABLE:
                    try:
                        result.set_result(self.predict(model, signature, inputs, version,
                                                       outputs))
                    except ClientError as retry_exc:
                        result.set_exception(retry_exc)
                else:
                    result.set_exception(ClientError(exc.code().name, exc.details() or "",
                                                     address))

        call.add_done_callback(done)
        return result

    def request_size(self, model: str, signature: str, inputs: dict[str, np.ndarray]) -> int:
        from tfdeploy.client import tensors

        request = self._predict_pb2.PredictRequest()
        self._spec(request.model_spec, model, None, signature)
        for k, v in inputs.items():
            request.inputs[k].CopyFrom(tensors.to_proto(v))
        return request.ByteSize()


_HTTP_CODES = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED",
               500: "INTERNAL", 501: "UNIMPLEMENTED", 503: "UNAVAILABLE"}


def _jsonable(array: np.ndarray):
    import numpy as np

    if array.dtype.kind == "O":
        return np.frompyfunc(lambda b: {"b64": base64.b64encode(b).decode()}, 1, 1)(
            array).tolist()
    return array.tolist()


def _from_json(value, dtype: str | None) -> np.ndarray:
    import numpy as np

    def dec(v):
        if isinstance(v, dict) and "b64" in v:
            return base64.b64decode(v["b64"])
        if isinstance(v, list):
            return [dec(x) for x in v]
        return v.encode() if isinstance(v, str) else v

    if dtype == "string":
        return np.array(dec(value), dtype=object)
    return np.asarray(value, dtype={"uint8": np.uint8, "int64": np.int64, "int32": np.int32,
                                    "float": np.float32, "double": np.float64}.get(dtype))


class RestTransport(_Base):
    name = "rest"

    def _http(self, address: str, method: str, path: str, body: dict | None = None):
        import urllib.error  # REST only: keeps gRPC clients' start-up lean
        import urllib.request

        url = f"http://{address}{path}"
        data = json.dumps(body, separators=(",", ":")).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("error", exc.reason)
            except ValueError:
                message = str(exc.reason)
            raise ClientError(_HTTP_CODES.get(exc.code, f"HTTP_{exc.code}"), message,
                              address) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ClientError("UNAVAILABLE", f"cannot reach {url}: {reason}", address) from None

    @staticmethod
    def _path(model: str, version: int | None) -> str:
        return f"/v1/models/{model}" + (f"/versions/{version}" if version is not None else "")

    def metadata(self, model: str, version: int | None = None) -> dict[str, Signature]:
        body = self._with_retries(
            lambda a: self._http(a, "GET", self._path(model, version) + "/metadata"))
        sigs = body["metadata"]["signature_def"]["signature_def"]

        def table(infos):
            out = {}
            for k, v in infos.items():
                dtype = v.get("dtype", "DT_INVALID")[3:].lower()
                shape = v.get("tensor_shape", {})
                out[k] = (dtype, None if shape.get("unknown_rank") else
                          [int(d.get("size", 0)) for d in shape.get("dim", [])])
            return out

        return {k: Signature(table(sd.get("inputs", {})), table(sd.get("outputs", {})))
                for k, sd in sigs.items()}

    def predict(self, model: str, signature: str, inputs: dict[str, np.ndarray],
                version: int | None = None, outputs: list[str] | None = None,
                dtypes: dict[str, str] | None = None) -> dict[str, np.ndarray]:
        body = {"signature_name": signature,
                "inputs": {k: _jsonable(v) for k, v in inputs.items()}}
        result = self._with_retries(
            lambda a: self._http(a, "POST", self._path(model, version) + ":predict", body))
        out = result["outputs"]
        if not isinstance(out, dict):
            out = {(outputs or ["output"])[0]: out}
        dtypes = dtypes or {}
        arrays = {k: _from_json(v, dtypes.get(k)) for k, v in out.items()}
        return {k: arrays[k] for k in (outputs or arrays)}

    def predict_png(self, model: str, image: bytes, version: int | None = None,
                    signature: str = "serving_default") -> bytes:
        body = {"signature_name": signature,
                "inputs": {"image_bytes": [{"b64": base64.b64encode(image).decode()}]}}
        result = self._with_retries(
            lambda a: self._http(a, "POST", self._path(model, version) + ":predict", body))
        out = result.get("outputs")
        try:
            value = (out["mask_png"] if isinstance(out, dict) else out)[0]
            return base64.b64decode(value["b64"]) if isinstance(value, dict) else \
                value.encode("latin-1")
        except (KeyError, IndexError, TypeError, ValueError):
            raise ClientError("INTERNAL", "response has no mask_png output") from None
