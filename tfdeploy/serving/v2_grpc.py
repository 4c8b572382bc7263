"""gRPC front end of the Open Inference Protocol (``inference.GRPCInferenceService``) and
gRPC health checking (``grpc.health.v1.Health``), on the server's gRPC port beside TF
Serving's PredictionService and ModelService.

ModelInfer takes the same request path as Predict (``path.RequestPath``); the other calls
are control calls on the control pool, so they answer while inference is busy.  Health:
service "" is SERVING when every model has a version that serves (as /v2/health/ready),
a model's name is SERVING when that model serves, NOT_SERVING while it loads; an unknown
service is NOT_FOUND, as the health protocol says.  Kubernetes' gRPC probes call Check.
Watch streams the status at once and then each change (``MAX_WATCHES`` at once).
"""

from __future__ import annotations

import asyncio
import threading

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


#: The service names tensorflow_model_server marks SERVING once it runs (a model of that
#: name, if any, takes precedence).
SERVICE_NAMES = frozenset({"ModelService", "PredictionService"})
#: How often a Watch stream looks at the manager's change count (a cheap integer read),
#: and how often it recomputes the status even without a change (a model the server
#: stopped serving for a reason the count does not see).
WATCH_POLL, WATCH_RECHECK = 0.1, 2.0
#: Watch streams held at once: each holds one of the server's concurrent calls
#: (``maximum_concurrent_rpcs``) for as long as its client keeps it, so they are bounded
#: below what inference needs; past it Watch answers RESOURCE_EXHAUSTED.
MAX_WATCHES = 8


def _health_servicer(server, in_pool, stopping: threading.Event):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    status = health_pb2.HealthCheckResponse.ServingStatus

    def current(service: str) -> int:
        """SERVING / NOT_SERVING, or SERVICE_UNKNOWN for a name that is no model."""
        if not service:
            return status.SERVING if v2_rest.server_ready(server)[0] else status.NOT_SERVING
        if service not in server.manager.model_names():
            return status.SERVING if service in SERVICE_NAMES else status.SERVICE_UNKNOWN
        try:
            server.manager.handle(service)
        except StatusError:
            return status.NOT_SERVING
        return status.SERVING

    watches = threading.BoundedSemaphore(MAX_WATCHES)

    class Health(health_pb2_grpc.HealthServicer):
        @in_pool
        def Check(self, request, call):
            found = current(request.service)
            if found == status.SERVICE_UNKNOWN:
                raise StatusError(Code.NOT_FOUND, f"unknown service: {request.service}")
            return health_pb2.HealthCheckResponse(status=found)

        async def Watch(self, request, context):
            """The status at once, then each change, as the health protocol says: an
            unknown service is SERVICE_UNKNOWN (the stream stays, the model may come);
            the stream ends when the client cancels it or the server stops (after a last
            NOT_SERVING)."""
            if not watches.acquire(blocking=False):
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                    f"too many health watches (at most {MAX_WATCHES})")
            try:
                last, seen, since = None, -1, 0.0
                while not stopping.is_set():
                    generation = server.manager.generation
                    if generation != seen or since >= WATCH_RECHECK:
                        seen, since = generation, 0.0
                        found = current(request.service)
                        if found != last:
                            last = found
                            yield health_pb2.HealthCheckResponse(status=found)
                    await asyncio.sleep(WATCH_POLL)
                    since += WATCH_POLL
                if last != status.NOT_SERVING:
                    yield health_pb2.HealthCheckResponse(status=status.NOT_SERVING)
            finally:
                watches.release()

    return health_pb2_grpc, Health()


def register(grpc_server, server, in_pool, stopping: threading.Event) -> None:
    """Add GRPCInferenceService and Health to ``grpc_server`` (a grpc.aio server);
    ``stopping`` set ends the Health Watch streams (the server is going away)."""
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
        health_grpc, health = _health_servicer(server, in_pool, stopping)
        health_grpc.add_HealthServicer_to_server(health, grpc_server)
