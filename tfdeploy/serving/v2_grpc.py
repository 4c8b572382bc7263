"""gRPC front end of the Open Inference Protocol (``inference.GRPCInferenceService``) and
gRPC health checking (``grpc.health.v1.Health``), on the server's gRPC port beside TF
Serving's PredictionService and ModelService.

ModelInfer takes the same request path as Predict (``path.RequestPath``); the other calls
are control calls on the control pool, so they answer while inference is busy.  Health:
service "" is SERVING when every model has a version that serves (as /v2/health/ready),
a model's name is SERVING when that model serves, NOT_SERVING while it loads; an unknown
service is NOT_FOUND, as the health protocol says.  Kubernetes' gRPC probes call Check.
"""

from __future__ import annotations

import grpc

from tfdeploy.serving import v2_rest
from tfdeploy.serving.path import Call
from tfdeploy.tfs import v2
from tfdeploy.tfs.codes import Code, StatusError

#: v2 calls that never enter the request path (grpc_api runs them on its control pool).
CONTROL_METHODS = frozenset({"ServerLive", "ServerReady", "ModelReady", "ServerMetadata",
                             "ModelMetadata", "Check"})


def _params(request) -> dict:
    return {k: v2.parameter_value(p) for k, p in request.parameters.items()}


def _servicer(server, in_pool):
    """The GRPCInferenceService servicer; ``in_pool`` is grpc_api's pool decorator."""
    m = v2.grpc_messages()

    class InferenceService:
        @in_pool
        def ServerLive(self, request, call):
            return m["ServerLiveResponse"](live=True)

        @in_pool
        def ServerReady(self, request, call):
            return m["ServerReadyResponse"](ready=v2_rest.server_ready(server)[0])

        @in_pool
        def ModelReady(self, request, call):
            version = v2_rest.parse_version(request.version)
            try:
                server.manager.handle(request.name, version)
            except StatusError as exc:
                if exc.code is not Code.NOT_FOUND or request.name not in \
                        server.manager.model_names():
                    raise
                return m["ModelReadyResponse"](ready=False)
            return m["ModelReadyResponse"](ready=True)

        @in_pool
        def ServerMetadata(self, request, call):
            return m["ServerMetadataResponse"](**v2_rest.server_metadata())

        @in_pool
        def ModelMetadata(self, request, call):
            meta = v2_rest.model_metadata(server, request.name,
                                          v2_rest.parse_version(request.version))
            response = m["ModelMetadataResponse"](name=meta["name"],
                                                  versions=meta["versions"],
                                                  platform=meta["platform"])
            for key in ("inputs", "outputs"):
                for t in meta[key]:
                    getattr(response, key).add(**t)
            return response

        @in_pool
        def ModelInfer(self, request, call: Call):
            call.kind, call.name = "predict", request.model_name
            call.version = v2_rest.parse_version(request.model_version)
            call.signature = v2_rest.signature_parameter(_params(request))

            def decode(signature_def) -> dict:
                return v2.parse_grpc_request(request, v2_rest.expected_datatypes(signature_def))

            servable, _, outputs = server.path.predict(
                call, decode, [o.name for o in request.outputs])
            response = m["ModelInferResponse"](model_name=request.model_name,
                                               model_version=str(servable.version),
                                               id=request.id)
            v2.fill_grpc_response(response, outputs)
            return response

    return InferenceService()


def _health_servicer(server, in_pool):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    status = health_pb2.HealthCheckResponse.ServingStatus

    class Health(health_pb2_grpc.HealthServicer):
        @in_pool
        def Check(self, request, call):
            if not request.service:
                ready = v2_rest.server_ready(server)[0]
            elif request.service in server.manager.model_names():
                try:
                    server.manager.handle(request.service)
                    ready = True
                except StatusError:
                    ready = False
            else:
                raise StatusError(Code.NOT_FOUND, f"unknown service: {request.service}")
            return health_pb2.HealthCheckResponse(
                status=status.SERVING if ready else status.NOT_SERVING)

    return health_pb2_grpc, Health()


def register(grpc_server, server, in_pool) -> None:
    """Add GRPCInferenceService and Health to ``grpc_server`` (a grpc.aio server)."""
    m = v2.grpc_messages()
    service = _servicer(server, in_pool)
    handlers = {
        rpc: grpc.unary_unary_rpc_method_handler(
            getattr(service, rpc),
            request_deserializer=m[request].FromString,
            response_serializer=m[response].SerializeToString)
        for rpc, (request, response) in v2.RPCS.items()}
    grpc_server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(f"{v2.PACKAGE}.{v2.SERVICE}", handlers),))
    if server.options.enable_grpc_healthcheck_service:
        health_grpc, health = _health_servicer(server, in_pool)
        health_grpc.add_HealthServicer_to_server(health, grpc_server)
