"""gRPC transport: TF Serving's PredictionService and ModelService over one channel."""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Future
from typing import TYPE_CHECKING

import grpc

from tfdeploy.client.base import ClientError, Transport
from tfdeploy.client.defaults import DEFAULT_TIMEOUT
from tfdeploy.client.tls import TlsConfig, grpc_handshake_error
from tfdeploy.tfs import protos, requests
from tfdeploy.tfs.names import MASK_PNG, SERVING_DEFAULT
from tfdeploy.tfs.saved_model import Signature, signature

if TYPE_CHECKING:
    import numpy as np

_OPTIONS = [
    ("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1),
    # Reconnect quickly after a server restart: gRPC's default backoff grows to 2 minutes,
    # and calls on a channel waiting to reconnect fail at once.
    ("grpc.initial_reconnect_backoff_ms", 250), ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2000),
    # Each channel its own connection: gRPC shares one per address and options across a
    # process's channels, so a new transport would inherit the failure of an old one
    # (a hung or restarted server that used the port before) and fail its first call at
    # once with that error, without trying the server now listening.
    ("grpc.use_local_subchannel_pool", 1),
]


def channel(address: str, tls: TlsConfig | None) -> grpc.Channel:
    """A channel to ``address``: TLS with ``tls``, plain otherwise; reconnecting quickly."""
    return (tls.grpc_channel(address, _OPTIONS) if tls is not None
            else grpc.insecure_channel(address, options=_OPTIONS))


def rpc_error(exc: grpc.RpcError, address: str, tls: TlsConfig | None) -> ClientError:
    """The ClientError of a failed call (shared by the v1 and v2 gRPC transports)."""
    details = exc.details() or str(exc.code())
    # an HTTP/1.1 server (a REST port) answered: the wrong port, not a passing fault
    wrong_protocol = "Failed parsing HTTP/2" in details
    tls_error = (grpc_handshake_error(details, address, tls)
                 if exc.code() == grpc.StatusCode.UNAVAILABLE else None)
    if tls_error:
        # asking again cannot change a certificate: not retried, said plainly
        return ClientError(exc.code().name, tls_error, address, retryable=False)
    refused = exc.code() == grpc.StatusCode.UNAVAILABLE and not wrong_protocol and (
        "failed to connect" in details.lower() or "refused" in details.lower())
    return ClientError(exc.code().name, details, address,
                       retryable=False if wrong_protocol else None, refused=refused)


class GrpcTransport(Transport):
    name = "grpc"

    def __init__(self, address: str, timeout: float = DEFAULT_TIMEOUT,
                 tls: TlsConfig | None = None):
        self.address, self.timeout, self.tls = address, timeout, tls
        self._channel = channel(address, tls)
        services = protos.module("tensorflow_serving.apis.prediction_service_pb2_grpc")
        self._predictions = services.PredictionServiceStub(self._channel)
        self._models = None  # ModelService stub, made on first use

    def _error(self, exc: grpc.RpcError) -> ClientError:
        return rpc_error(exc, self.address, self.tls)

    def _call(self, stub, method: str, request):
        try:
            return getattr(stub, method)(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise self._error(exc) from None

    def metadata(self, model: str, version: int | None = None) -> dict[str, Signature]:
        response = self._call(self._predictions, "GetModelMetadata",
                              requests.metadata_request(model, version))
        return {k: signature(sd) for k, sd in requests.signature_defs(response).items()}

    def status(self, model: str, version: int | None = None) -> dict[int, str]:
        if self._models is None:
            services = protos.module("tensorflow_serving.apis.model_service_pb2_grpc")
            self._models = services.ModelServiceStub(self._channel)
        response = self._call(self._models, "GetModelStatus",
                              requests.status_request(model, version))
        return requests.version_states(response)

    def predict(self, model: str, signature: str, inputs: Mapping[str, np.ndarray],
                version: int | None = None, outputs: list[str] | None = None,
                output_dtypes: Mapping[str, str] | None = None) -> dict[str, np.ndarray]:
        from tfdeploy.tfs import tensors

        request = requests.predict_request(model, signature, inputs, version, outputs or ())
        response = self._call(self._predictions, "Predict", request)
        return {k: tensors.from_proto(v) for k, v in response.outputs.items()}

    def predict_png(self, model: str, image: bytes, version: int | None = None,
                    signature: str = SERVING_DEFAULT) -> bytes:
        request = requests.encoded_image_request(model, [image], version, signature)
        response = self._call(self._predictions, "Predict", request)
        values = response.outputs[MASK_PNG].string_val
        if len(values) != 1:
            raise ClientError("INTERNAL", f"expected one {MASK_PNG}, got {len(values)}",
                              self.address)
        return values[0]

    def predict_async(self, model: str, signature: str, inputs: Mapping[str, np.ndarray],
                      version: int | None = None, outputs: list[str] | None = None,
                      output_dtypes: Mapping[str, str] | None = None) -> Future:
        """gRPC's own asynchronous call (``Predict.future``): no thread per request."""
        from tfdeploy.tfs import tensors

        request = requests.predict_request(model, signature, inputs, version, outputs or ())
        call = self._predictions.Predict.future(request, timeout=self.timeout)
        result: Future = Future()

        def done(call_future) -> None:
            try:
                response = call_future.result()
            except grpc.RpcError as exc:
                result.set_exception(self._error(exc))
                return
            result.set_result({k: tensors.from_proto(v) for k, v in response.outputs.items()})

        call.add_done_callback(done)
        return result

    def close(self) -> None:
        self._channel.close()
