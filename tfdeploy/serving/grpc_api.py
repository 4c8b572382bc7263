"""gRPC front end: TF Serving's PredictionService and ModelService, registered with the
official generated servicer helpers so stubs written for tensorflow_model_server connect.

Predict outputs go in the typed value fields (int64_val, ...), never tensor_content, as
tensorflow_model_server does: clients written for it (the tutorial's included) read only
those.
"""

from __future__ import annotations

import logging
from concurrent import futures

import grpc

from tfdeploy.tfs import protos, tensors
from tfdeploy.tfs.codes import Code, StatusError

log = logging.getLogger("tfdeploy.serving.grpc")


def _spec(model_spec) -> tuple[str, int | None, str | None]:
    version = model_spec.version.value if model_spec.HasField("version") else None
    return model_spec.name, version, (model_spec.version_label or None)


def _abort(context: grpc.ServicerContext, exc: StatusError):
    context.abort(getattr(grpc.StatusCode, exc.code.name), exc.message)


def _guard(method):
    """StatusError -> the matching gRPC status; anything else -> INTERNAL, logged."""

    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except StatusError as exc:
            _abort(context, exc)
        except ValueError as exc:
            _abort(context, StatusError(Code.INVALID_ARGUMENT, str(exc)))
        except Exception as exc:
            if isinstance(exc, grpc.RpcError) or type(exc).__name__ == "_AbortError":
                raise
            log.exception("internal error in %s", method.__name__)
            _abort(context, StatusError(Code.INTERNAL, f"internal error: {exc}"))

    wrapper.__name__ = method.__name__
    return wrapper


def _servicers(server):
    ps_grpc = protos.module("tensorflow_serving.apis.prediction_service_pb2_grpc")
    ms_grpc = protos.module("tensorflow_serving.apis.model_service_pb2_grpc")
    predict_pb2 = protos.module("tensorflow_serving.apis.predict_pb2")
    mm_pb2 = protos.module("tensorflow_serving.apis.model_management_pb2")

    class PredictionService(ps_grpc.PredictionServiceServicer):
        @_guard
        def Predict(self, request, context):
            name, version, label = _spec(request.model_spec)
            try:
                inputs = {k: tensors.from_proto(v) for k, v in request.inputs.items()}
            except ValueError as exc:
                raise StatusError(Code.INVALID_ARGUMENT, f"bad input tensor: {exc}") from None
            servable, key, outputs = server.predict(
                name, version, label, request.model_spec.signature_name, inputs,
                list(request.output_filter), api="grpc")
            response = predict_pb2.PredictResponse()
            response.model_spec.name = name
            response.model_spec.version.value = servable.version
            response.model_spec.signature_name = key
            for k, v in outputs.items():
                response.outputs[k].CopyFrom(tensors.to_proto(v, typed=True))
            return response

        @_guard
        def GetModelMetadata(self, request, context):
            name, version, label = _spec(request.model_spec)
            return server.metadata_proto(name, version, label, tuple(request.metadata_field))

        @_guard
        def Classify(self, request, context):
            raise StatusError(Code.UNIMPLEMENTED,
                               "Classify is not implemented by tfdeploy-model-server; "
                               "DeepLab models serve Predict signatures only")

        @_guard
        def Regress(self, request, context):
            raise StatusError(Code.UNIMPLEMENTED,
                               "Regress is not implemented by tfdeploy-model-server; "
                               "DeepLab models serve Predict signatures only")

        @_guard
        def MultiInference(self, request, context):
            raise StatusError(Code.UNIMPLEMENTED, "MultiInference is not implemented")

    class ModelService(ms_grpc.ModelServiceServicer):
        @_guard
        def GetModelStatus(self, request, context):
            name, version, label = _spec(request.model_spec)
            return server.status_proto(name, version, label)

        @_guard
        def HandleReloadConfigRequest(self, request, context):
            # A config that is refused fails the call with its status (as
            # tensorflow_model_server does) and leaves the config in force serving.
            server.apply_config(request.config)
            return mm_pb2.ReloadConfigResponse()

    return ps_grpc, PredictionService(), ms_grpc, ModelService()


def serve(server, host: str, port: int) -> grpc.Server:
    limit = server.options.max_request_bytes
    grpc_server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=server.options.grpc_max_threads,
                                   thread_name_prefix="grpc"),
        options=[("grpc.max_receive_message_length", limit),
                 ("grpc.max_send_message_length", -1),
                 ("grpc.so_reuseport", 0)])
    ps_grpc, predictions, ms_grpc, models = _servicers(server)
    ps_grpc.add_PredictionServiceServicer_to_server(predictions, grpc_server)
    ms_grpc.add_ModelServiceServicer_to_server(models, grpc_server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = grpc_server.add_insecure_port(address)
    except RuntimeError:
        bound = 0
    if not bound:
        raise StatusError(Code.UNAVAILABLE, f"cannot bind gRPC port {address} (in use?)")
    grpc_server.start()
    return grpc_server
