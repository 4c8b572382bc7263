"""gRPC front end: TF Serving's PredictionService and ModelService, registered with the
official generated servicer helpers so stubs written for tensorflow_model_server connect;
``v2_grpc`` adds the Open Inference Protocol's service and gRPC health checking.

Predict outputs go in the typed value fields (int64_val, ...), never tensor_content, as
tensorflow_model_server does: clients written for it (the tutorial's included) read only
those.

The server is grpc.aio on an event loop thread of its own; each call runs in a thread
pool chosen by its kind.  Inference calls (Predict, Classify, Regress, MultiInference)
go to the server's request path (``serving/path.py``) with their deadline: it admits them
(``--grpc_max_threads`` at once, ``--max_queued_requests`` waiting, UNAVAILABLE beyond),
bounds their session run by the deadline and never runs one that expired or was
cancelled.  ModelService and metadata calls have a small pool of their own, so
GetModelStatus or HandleReloadConfigRequest never queue behind predictions (a health
check must answer while the model is busy).  Reload calls wait for the models they add
to load (as tensorflow_model_server's do), so they have a pool of their own too: reloads
waiting on a slow load never hold up a status call.  ``maximum_concurrent_rpcs`` bounds
the calls (and so the request messages) held at once: past it gRPC itself answers
RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from concurrent import futures

import grpc

from tfdeploy.serving import v2_grpc
from tfdeploy.serving.path import Call, deadline_in
from tfdeploy.tfs import protos, tensors
from tfdeploy.tfs.codes import INTERNAL_MESSAGE, Code, StatusError

log = logging.getLogger("tfdeploy.serving.grpc")


def _spec(model_spec) -> tuple[str, int | None, str | None]:
    version = model_spec.version.value if model_spec.HasField("version") else None
    return model_spec.name, version, (model_spec.version_label or None)


def _status_error(exc: Exception) -> StatusError:
    """The status a failed call answers with: its own, INVALID_ARGUMENT for a ValueError
    (a malformed message), INTERNAL (logged) for anything else."""
    if isinstance(exc, StatusError):
        return exc
    if isinstance(exc, ValueError):
        return StatusError(Code.INVALID_ARGUMENT, str(exc))
    log.exception("internal error", exc_info=exc)
    return StatusError(Code.INTERNAL, INTERNAL_MESSAGE)


#: Which pool runs a call: "reload" for config reloads, "control" for status and
#: metadata, "inference" otherwise.
CONTROL_METHODS = frozenset({"GetModelStatus", "GetModelMetadata"}) | \
    v2_grpc.CONTROL_METHODS
RELOAD_METHODS = frozenset({"HandleReloadConfigRequest", "_reload"})
CONTROL_THREADS = 4
#: Inference threads beyond the slots and the queue: a call past both is refused
#: (UNAVAILABLE) on one of these at once instead of waiting for a thread to refuse it.
SPARE_THREADS = 8


def inference_threads(options) -> int:
    return options.grpc_max_threads + options.max_queued_requests + SPARE_THREADS


#: Seconds the connections stay open after the last answer of a drain went out, before
#: they close: time for a client to read it (see ``Flight``).
LINGER_SECONDS = 1.0
STOPPING_MESSAGE = "the server is shutting down; send the request to another replica"


class Flight:
    """The calls inside the server's handlers, for a shutdown in two phases.

    grpc.aio's ``stop(grace)`` counts a call done once its answer and status are queued
    on the connection, then closes the connection at once.  A client still reading a
    large answer lost it: the WINDOW_UPDATEs it sent as it read reached a closed socket,
    whose reset dropped the rest (the 1.2 MB answer for 960x1280 pixels of
    ``test_server.py``'s drain test, about one full run in four; "Connection reset by
    peer" also came once in 16 drains to a slowed client, none in 10 since).  So the
    server first refuses new inference calls
    (UNAVAILABLE: a failover client moves on) and waits for the calls in flight, then
    keeps the connections open ``LINGER_SECONDS`` after the last answer, and only then
    stops gRPC.  Status, metadata and health calls are still answered meanwhile;
    ``stopping`` also ends Health Watch streams (serving/v2_grpc.py)."""

    def __init__(self) -> None:
        self._idle = threading.Condition()
        self._count = 0
        self._last_done = float("-inf")
        self.stopping = threading.Event()

    def enter(self, refusable: bool) -> bool:
        """Count a call in; False (not counted) for a refusable one once stopping."""
        with self._idle:
            if refusable and self.stopping.is_set():
                return False
            self._count += 1
            return True

    def leave(self) -> None:
        with self._idle:
            self._count -= 1
            self._last_done = time.monotonic()
            if not self._count:
                self._idle.notify_all()

    def drain(self, deadline: float) -> None:
        """Refuse new inference calls, wait for the calls in flight and then the linger,
        until ``deadline`` (time.monotonic()) at the latest."""
        with self._idle:
            self.stopping.set()
            self._idle.wait_for(lambda: not self._count, max(deadline - time.monotonic(), 0))
            linger_end = min(self._last_done + LINGER_SECONDS, deadline)
        time.sleep(max(linger_end - time.monotonic(), 0.0))


def _in_pool(method, pools: dict[str, futures.Executor], flight: Flight):
    """An async handler that runs the blocking ``method(self, request, call)`` in its pool
    and turns a failure into the call's gRPC status.  ``call`` carries the deadline (from
    the client's) and is marked cancelled when the client goes away, so a call still
    waiting for a slot leaves the queue.  ``flight`` counts the call (and refuses an
    inference call once the server is stopping)."""
    kind = ("reload" if method.__name__ in RELOAD_METHODS else
            "control" if method.__name__ in CONTROL_METHODS else "inference")
    pool = pools[kind]

    @functools.wraps(method)
    async def handler(self, request, context):
        if not flight.enter(refusable=kind == "inference"):
            await context.abort(grpc.StatusCode.UNAVAILABLE, STOPPING_MESSAGE)
        try:
            loop = asyncio.get_running_loop()
            remaining = context.time_remaining()
            call = Call("", "grpc", "", deadline=deadline_in(remaining))
            try:
                return await loop.run_in_executor(pool, method, self, request, call)
            except asyncio.CancelledError:
                call.cancelled.set()
                raise
            except Exception as exc:  # every failure becomes a status
                error = _status_error(exc)
            await context.abort(getattr(grpc.StatusCode, error.code.name), error.message)
        finally:
            flight.leave()

    return handler


def _decode(request, max_bytes: int):
    """A decoder of the request's TensorProtos for the request path: their declared sizes
    are checked against ``max_bytes`` (all inputs together) before any is expanded."""

    def decode(signature_def) -> dict:
        budget, inputs = max_bytes, {}
        try:
            for key, proto in request.inputs.items():
                inputs[key] = tensors.from_proto(proto, max_bytes=budget)
                budget -= tensors.array_bytes(inputs[key])
        except ValueError as exc:
            raise StatusError(Code.INVALID_ARGUMENT, f"bad input tensor: {exc}") from None
        return inputs

    return decode


def _serialized(response) -> bytes:
    """A response message's wire bytes; a method that built them itself returns bytes."""
    return response if isinstance(response, bytes) else response.SerializeToString()


def _handlers(service, servicer) -> grpc.GenericRpcHandler:
    """The handlers ``add_<Service>Servicer_to_server`` registers, derived from the
    ``service`` descriptor, except that a method may answer with its response's wire bytes:
    Predict does (``tensors.predict_response``), since filling a TensorProto value by
    value cost more than the rest of the request path for a 513x513 map."""
    from google.protobuf import message_factory

    handlers = {
        method.name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name),
            request_deserializer=message_factory.GetMessageClass(method.input_type).FromString,
            response_serializer=_serialized)
        for method in service.methods}
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def _servicers(server, pools: dict[str, futures.Executor], flight: Flight):
    ps_grpc = protos.module("tensorflow_serving.apis.prediction_service_pb2_grpc")
    ms_grpc = protos.module("tensorflow_serving.apis.model_service_pb2_grpc")
    _pool = functools.partial(_in_pool, pools=pools, flight=flight)  # noqa: N806
    predict_pb2 = protos.module("tensorflow_serving.apis.predict_pb2")
    mm_pb2 = protos.module("tensorflow_serving.apis.model_management_pb2")

    def inference(call: Call, kind: str, spec) -> Call:
        call.kind = kind
        call.name, call.version, call.label = _spec(spec) if spec is not None else (
            "", None, None)
        return call

    class PredictionService(ps_grpc.PredictionServiceServicer):
        @_pool
        def Predict(self, request, call):
            inference(call, "predict", request.model_spec)
            call.signature = request.model_spec.signature_name
            servable, key, outputs = server.path.predict(
                call, _decode(request, server.options.max_request_bytes),
                list(request.output_filter))
            response = predict_pb2.PredictResponse()
            response.model_spec.name = call.name
            response.model_spec.version.value = servable.version
            response.model_spec.signature_name = key
            # the answer's wire bytes, values encoded by numpy (see _handlers)
            return tensors.predict_response(response, outputs)

        @_pool
        def GetModelMetadata(self, request, call):
            name, version, label = _spec(request.model_spec)
            return server.metadata_proto(name, version, label, tuple(request.metadata_field))

        @_pool
        def Classify(self, request, call):
            return server.path.infer(inference(call, "classify", request.model_spec),
                                     request)

        @_pool
        def Regress(self, request, call):
            return server.path.infer(inference(call, "regress", request.model_spec),
                                     request)

        @_pool
        def MultiInference(self, request, call):
            # the first task names the model (all must name the same one); no task names
            # no model, which is not found, as with the official server
            spec = request.tasks[0].model_spec if request.tasks else None
            return server.path.infer(inference(call, "multi_inference", spec), request)

    class ModelService(ms_grpc.ModelServiceServicer):
        def __init__(self, reload_where: str = "") -> None:
            #: "" = reloads answered here; else where they are (--model_service_port):
            #: on this server only calls over the UNIX socket may reload
            self.reload_where = reload_where

        @_pool
        def GetModelStatus(self, request, call):
            if not request.HasField("model_spec"):  # tensorflow_model_server's words
                raise StatusError(Code.INVALID_ARGUMENT, "Missing ModelSpec")
            name, version, label = _spec(request.model_spec)
            return server.status_proto(name, version, label)

        @_pool
        def _reload(self, request, call):
            # A config that is refused fails the call with its status (as
            # tensorflow_model_server does) and leaves the config in force serving.
            server.apply_config(request.config)
            return mm_pb2.ReloadConfigResponse()

        async def HandleReloadConfigRequest(self, request, context):
            if self.reload_where and not context.peer().startswith("unix:"):
                await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                    "HandleReloadConfigRequest is served on "
                                    f"{self.reload_where} only (--model_service_port)")
            return await self._reload(request, context)

    reload_where = ""
    port, socket_path = server.options.model_service_port, server.options.grpc_socket_path
    if port:
        reload_where = " and ".join(
            ([f"{server.options.model_service_host}:{port}"] if port > 0 else [])
            + ([f"unix:{socket_path}"] if socket_path else []))
    return PredictionService(), ms_grpc, ModelService(reload_where), ModelService


def channel_arguments(text: str) -> dict[str, int | str]:
    """--grpc_channel_arguments: ``key=value`` pairs, comma-separated; integer values as
    integers, as the official server passes them."""
    out: dict[str, int | str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise StatusError(Code.INVALID_ARGUMENT,
                              f"--grpc_channel_arguments: expected key=value, got {item!r}")
        try:
            out[key] = int(value)
        except ValueError:
            out[key] = value
    return out


def ssl_credentials(path: str):
    """--ssl_config_file as tensorflow_model_server reads it: the server's key and
    certificate, an optional CA for client certificates, which client_verify requires."""
    if not path:
        return None
    from tfdeploy.serving.config import ssl_config

    config = ssl_config(path)  # server_key and server_cert checked there
    return grpc.ssl_server_credentials(
        [(config.server_key.encode(), config.server_cert.encode())],
        root_certificates=config.custom_ca.encode() or None,
        require_client_auth=config.client_verify)


def add_port(grpc_server, address: str, credentials, failure: str) -> None:
    """Listen on ``address`` (TLS when ``credentials``); UNAVAILABLE saying ``failure``
    when it cannot (gRPC reports a port in use as 0 or a RuntimeError)."""
    try:
        bound = (grpc_server.add_insecure_port(address) if credentials is None
                 else grpc_server.add_secure_port(address, credentials))
    except RuntimeError:
        bound = 0
    if not bound:
        raise StatusError(Code.UNAVAILABLE, failure)


class GrpcServer:
    """The grpc.aio server on its event loop thread, stopped from any thread."""

    def __init__(self, server, host: str, port: int):
        options = server.options
        self.pools = {
            "inference": futures.ThreadPoolExecutor(inference_threads(options),
                                                    thread_name_prefix="grpc"),
            "control": futures.ThreadPoolExecutor(CONTROL_THREADS,
                                                  thread_name_prefix="grpc-control"),
            "reload": futures.ThreadPoolExecutor(CONTROL_THREADS,
                                                 thread_name_prefix="grpc-reload"),
        }
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="grpc-loop")
        self._thread.start()
        self._control = None
        self._flight = Flight()
        try:
            self._server = self._call(self._start(server, options.max_request_bytes))
        except BaseException:
            self._close_loop()
            raise

    def _call(self, coroutine, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    async def _start(self, server, limit: int) -> grpc.aio.Server:
        options = {"grpc.max_receive_message_length": limit,
                   "grpc.max_send_message_length": -1, "grpc.so_reuseport": 0}
        options.update(channel_arguments(server.options.grpc_channel_arguments))
        grpc_server = grpc.aio.server(
            options=list(options.items()),
            maximum_concurrent_rpcs=inference_threads(server.options) + CONTROL_THREADS * 4)
        predictions, ms_grpc, models, model_service = _servicers(
            server, self.pools, self._flight)
        prediction_service = protos.module("tensorflow_serving.apis.prediction_service_pb2") \
            .DESCRIPTOR.services_by_name["PredictionService"]
        grpc_server.add_generic_rpc_handlers((_handlers(prediction_service, predictions),))
        ms_grpc.add_ModelServiceServicer_to_server(models, grpc_server)
        # the Open Inference Protocol and grpc.health.v1 beside them (serving/v2_grpc.py)
        v2_grpc.register(grpc_server, server, functools.partial(
            _in_pool, pools=self.pools, flight=self._flight), self._flight.stopping)
        credentials = ssl_credentials(server.options.ssl_config_file)
        self._control = None
        if server.options.model_service_port == -1 and not server.options.grpc_socket_path:
            raise StatusError(Code.INVALID_ARGUMENT, "--model_service_port=-1 (reloads on "
                              "the UNIX socket only) needs --grpc_socket_path")
        if server.options.model_service_port > 0:  # ModelService on a listener of its own
            control = grpc.aio.server(options=list(options.items()))
            ms_grpc.add_ModelServiceServicer_to_server(model_service(), control)
            host = server.options.model_service_host
            address = (f"[{host}]:{server.options.model_service_port}" if ":" in host
                       else f"{host}:{server.options.model_service_port}")
            add_port(control, address, credentials,
                     f"cannot bind ModelService port {address} (in use?)")
            await control.start()
            self._control = control
        add_port(grpc_server, self.address, credentials,
                 f"cannot bind gRPC port {self.address} (in use?)")
        socket_path = server.options.grpc_socket_path
        if socket_path:  # as tensorflow_model_server: the same services on a UNIX socket
            add_port(grpc_server, f"unix:{socket_path}", credentials,
                     f"cannot listen on UNIX socket {socket_path}")
        await grpc_server.start()
        return grpc_server

    def stop(self, grace: float) -> threading.Event:
        """Refuse new inference calls, let those in flight finish and be read (up to
        ``grace`` s in all: see ``Flight``), then stop gRPC; the event is set once
        stopped."""
        done = threading.Event()
        deadline = time.monotonic() + grace
        self._flight.stopping.set()  # at once, not when the stopping thread runs

        def run() -> None:
            try:
                self._flight.drain(deadline)
                left = max(deadline - time.monotonic(), 0.0)
                if self._control is not None:
                    self._call(self._control.stop(left))
                self._call(self._server.stop(left))
            finally:
                for pool in self.pools.values():
                    pool.shutdown(wait=False)
                self._close_loop()
                done.set()

        threading.Thread(target=run, daemon=True, name="grpc-stop").start()
        return done

    def _close_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def serve(server, host: str, port: int) -> GrpcServer:
    return GrpcServer(server, host, port)
