"""Open Inference Protocol (KServe v2) over gRPC: ``inference.GRPCInferenceService``
with tensors in ``raw_input_contents`` / ``raw_output_contents``, the messages built by
``tfs/v2.py`` exactly as the embedded server builds them (no generated module, so no
protobuf version pin).  Plain or TLS channels as the v1 gRPC transport makes them.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc
import numpy as np

from tfdeploy.client.base import ClientError
from tfdeploy.client.defaults import DEFAULT_TIMEOUT
from tfdeploy.client.grpc_transport import channel, rpc_error
from tfdeploy.client.tls import TlsConfig
from tfdeploy.client.v2_transport import V2Transport
from tfdeploy.tfs import v2
from tfdeploy.tfs.codes import Code, StatusError
from tfdeploy.tfs.names import SERVING_DEFAULT


class V2GrpcTransport(V2Transport):
    name = "grpc"
    lists_every_signature = False

    def __init__(self, address: str, timeout: float = DEFAULT_TIMEOUT,
                 tls: TlsConfig | None = None):
        self.address, self.timeout, self.tls = address, timeout, tls
        self._channel = channel(address, tls)
        self._messages = v2.grpc_messages()
        self._stubs: dict[str, grpc.UnaryUnaryMultiCallable] = {}

    def _call(self, rpc: str, request):
        stub = self._stubs.get(rpc)
        if stub is None:
            _, response = v2.RPCS[rpc]
            stub = self._stubs[rpc] = self._channel.unary_unary(
                f"/{v2.PACKAGE}.{v2.SERVICE}/{rpc}",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=self._messages[response].FromString)
        try:
            return stub(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise rpc_error(exc, self.address, self.tls) from None

    def _meta(self, model: str, version: int | None) -> dict:
        response = self._call("ModelMetadata", self._messages["ModelMetadataRequest"](
            name=model, version="" if version is None else str(version)))

        def tensors(items) -> list[dict]:
            return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
                    for t in items]

        return {"name": response.name, "versions": list(response.versions),
                "platform": response.platform, "inputs": tensors(response.inputs),
                "outputs": tensors(response.outputs)}

    def _infer(self, model: str, version: int | None, signature: str,
               inputs: Mapping[str, np.ndarray],
               outputs: list[str] | None) -> dict[str, np.ndarray]:
        request = v2.grpc_infer_request(
            model, version, dict(inputs),
            "" if signature in ("", SERVING_DEFAULT) else signature, outputs or ())
        response = self._call("ModelInfer", request)
        try:
            return v2.parse_grpc_response(response)
        except StatusError as exc:
            raise ClientError(Code.INTERNAL, f"unexpected response: {exc.message}",
                              self.address) from None

    def close(self) -> None:
        self._channel.close()
