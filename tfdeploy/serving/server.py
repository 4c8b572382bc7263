"""ModelServer: wires Source -> Manager, the request path and the gRPC/REST front ends
together.

Inference requests go through ``self.path`` (``serving/path.py``: resolve, admit,
deadline, run, metrics); status and metadata are answered here, never behind inference.
Both front ends only translate between their wire formats and these calls.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from tfdeploy.serving import config as config_files
from tfdeploy.serving import request_log
from tfdeploy.serving.loader import Loader
from tfdeploy.serving.manager import Manager
from tfdeploy.serving.metrics import Metrics
from tfdeploy.serving.options import ServerOptions
from tfdeploy.serving.path import Admission, RequestPath
from tfdeploy.serving.servable import Servable, session_threads
from tfdeploy.serving.source import FileSystemSource
from tfdeploy.tfs import flags, protos
from tfdeploy.tfs.codes import Code, StatusError

log = logging.getLogger("tfdeploy.serving")

#: a version's own BatchingParameters (--enable_per_model_batching_parameters)
PER_MODEL_BATCHING_FILE = "batching_params.pbtxt"

class _Announced:
    """A Loader whose loaded servable is announced (to the metrics: its signature names
    become label values) before the Manager makes it AVAILABLE."""

    def __init__(self, loader: Loader, announce: Callable[[Servable], None]):
        self.loader, self.announce = loader, announce

    def load(self) -> Servable:
        servable = self.loader.load()
        self.announce(servable)
        return servable

    @property
    def abandon(self):
        """The wrapped Loader's cue to stop (the Manager sets it: --load_timeout_seconds)."""
        return self.loader.abandon

    @abandon.setter
    def abandon(self, event) -> None:
        self.loader.abandon = event


def validate_config(config) -> dict[str, tuple[Path, object]]:
    """``{name: (base_path, version_policy)}`` of a ModelServerConfig, or a StatusError with
    tensorflow_model_server's message; checked in full before anything changes, so a bad
    config leaves the one in force serving."""
    if config.WhichOneof("config") != "model_config_list":
        raise StatusError(Code.INVALID_ARGUMENT,
                          "ServerModelConfig type not supported by HandleReloadConfigRequest."
                          " Only ModelConfigList is currently supported")
    models = {}
    for mc in config.model_config_list.config:
        if mc.name in models:
            raise StatusError(Code.INVALID_ARGUMENT,
                              f"Illegal to list model {mc.name} multiple times in config list")
        if not Path(mc.base_path).is_absolute():
            raise StatusError(Code.INVALID_ARGUMENT,
                              f"Expected model {mc.name} to have an absolute path or URI; got "
                              f"base_path()={mc.base_path}")
        if mc.model_platform not in ("", "tensorflow"):
            raise StatusError(Code.INVALID_ARGUMENT,
                              f"Model {mc.name} requests unsupported platform "
                              f"{mc.model_platform}")
        request_log.sink_of(mc)  # a logging_config we cannot honour is refused here
        models[mc.name] = (Path(mc.base_path), mc.model_version_policy)
    return models


def check_roots(models: dict[str, tuple[Path, object]], roots_flag: str) -> None:
    """``--allowed_model_roots`` (ours): every base path, symlinks resolved, lies under one
    of the roots.  A SavedModel is code (its graph can read files), so a reload must not
    point the server at any directory a caller names."""
    roots = [Path(r).resolve() for r in roots_flag.split(",") if r.strip()]
    if not roots:
        return
    for name, (base, _) in models.items():
        real = Path(os.path.realpath(base))
        if not any(real == root or root in real.parents for root in roots):
            raise StatusError(Code.PERMISSION_DENIED,
                              f"Model {name}: base path {base} is not under "
                              f"--allowed_model_roots")


class ModelServer:
    def __init__(self, options: ServerOptions):
        self.options = options
        self.metrics = Metrics()
        self.prometheus_path: str | None = None
        if options.monitoring_config_file:
            mc = config_files.monitoring_config(options.monitoring_config_file)
            if mc.prometheus_config.enable:
                self.prometheus_path = (mc.prometheus_config.path
                                        or "/monitoring/prometheus/metrics")
        self.batching = None
        if options.enable_batching:
            self.batching = config_files.batching_parameters(options.batching_parameters_file)
            from tfdeploy.serving.batching import BatchOptions

            BatchOptions.from_proto(self.batching)  # tensorflow_model_server's checks, now
        elif options.batching_parameters_file:  # as tensorflow_model_server: not ignored
            raise StatusError(Code.INVALID_ARGUMENT,
                              "server_options.batching_parameters_file is set without "
                              "setting server_options.enable_batching to true.")
        self.manager = Manager(self._loader, max_load_retries=options.max_num_load_retries,
                               retry_interval=options.load_retry_interval_micros / 1e6,
                               num_load_threads=options.num_load_threads,
                               num_unload_threads=options.num_unload_threads,
                               load_timeout=options.load_timeout_seconds)
        self.admission = Admission(
            {"grpc": options.grpc_max_threads, "rest": self.rest_slots},
            max_queued=options.max_queued_requests, budget=options.max_inflight_pixels)
        self.request_log = request_log.RequestLog(
            self.metrics.registry, max_file_bytes=options.request_log_max_file_bytes,
            max_total_bytes=options.request_log_max_total_bytes,
            queue_size=options.request_log_queue_size,
            tags=tuple(t.strip() for t in options.saved_model_tags.split(",") if t.strip()))
        self.path = RequestPath(self.manager, self.metrics, self.admission,
                                request_log=self.request_log,
                                max_request_bytes=options.max_request_bytes,
                                max_response_bytes=options.max_response_bytes,
                                check_method_names=options.enable_signature_method_name_check)
        self.source = FileSystemSource(self.manager.set_aspired_versions,
                                       options.file_system_poll_wait_seconds)
        #: each version session's (intra-op, inter-op) threads
        self.session_threads = session_threads(
            options.tensorflow_session_parallelism, options.tensorflow_intra_op_parallelism,
            options.tensorflow_inter_op_parallelism)
        self.config = self._initial_config()
        self._config_lock = threading.Lock()
        self._stop = threading.Event()
        self.accepting = False  # a port is open: signals drain from then on
        self._grpc = None
        self._rest = None
        self._threads: list[threading.Thread] = []

    @property
    def rest_slots(self) -> int:
        """--rest_api_num_threads: REST inferences at once (0: four per schedulable CPU,
        the official server's default)."""
        return self.options.rest_api_num_threads or 4 * flags.schedulable_cpus()

    # -- configuration -------------------------------------------------------------------
    def _initial_config(self):
        o = self.options
        if o.model_config_file:
            if o.model_base_path:  # as tensorflow_model_server: the config file wins
                log.warning("--model_config_file given: ignoring --model_name/--model_base_path")
            return config_files.model_server_config(o.model_config_file)
        if not o.model_base_path:
            raise StatusError(Code.INVALID_ARGUMENT,
                               "--model_base_path or --model_config_file is required")
        return config_files.single_model_config(o.model_name, o.model_base_path)

    def _loader(self, name: str, version: int, path: Path) -> Loader:
        tags = tuple(t.strip() for t in self.options.saved_model_tags.split(",") if t.strip())
        loader = Loader(name, version, path, warmup=self.options.enable_model_warmup,
                        batching=self._batching_for(path), metrics=self.metrics, tags=tags,
                        prefer_tflite=self.options.prefer_tflite_model,
                        threads=self.session_threads)
        return _Announced(loader, self.metrics.servable_loaded)

    def _batching_for(self, path: Path):
        """The BatchingParameters of the version at ``path``: the server's, or with
        --enable_per_model_batching_parameters the version's own batching_params.pbtxt,
        and no batching for a version without one (as tensorflow_model_server).  A file
        that does not parse or that TF Serving would refuse fails the load."""
        if self.batching is None or not self.options.enable_per_model_batching_parameters:
            return self.batching
        own = path / PER_MODEL_BATCHING_FILE
        if not own.is_file():
            return None
        from tfdeploy.serving.batching import BatchOptions

        params = config_files.batching_parameters(own)
        BatchOptions.from_proto(params)
        return params

    def apply_config(self, config, initial: bool = False) -> None:
        """Make ``config`` (a ModelServerConfig) the served set: new models load, removed
        ones unload, policies and labels change in place.

        As tensorflow_model_server's ServerCore: labels are checked against what is loaded
        now, before anything changes; then the models it adds are waited for until their
        latest version is AVAILABLE or failed for good (every retry spent; at start-up
        that is every model).  One that failed is an UNKNOWN error in the official words
        (``initial``: the server does not start; a reload: the call fails, and the config
        stays applied, as tensorflow_model_server leaves it: the models that serve keep
        serving).  The loads themselves run on loader threads: this thread only scans
        base paths and waits."""
        models = validate_config(config)
        check_roots(models, self.options.allowed_model_roots)
        with self._config_lock:
            self._check_labels(config)
            new = set(models) - set(self.manager.model_names())
            for mc in config.model_config_list.config:
                self.manager.set_labels(mc.name, dict(mc.version_labels))
            self.metrics.set_models(models)  # label values: configured names only
            self.request_log.set_sinks({
                mc.name: sink for mc in config.model_config_list.config
                if (sink := request_log.sink_of(mc)) is not None})
            self.source.set_models(models)
            self.config = config
            self.manager.retain_models(set(models))
            self.source.poll_once()
            failed = self.manager.await_latest(new, self.source.poll_once)
        if failed:
            # ServableId's DebugString and absl::Status's ToString, as the official
            # server writes them
            listing = "".join(f"{{{{name: {name} version: {vs.version}}} due to error: "
                              f"{vs.error[0].name}: {vs.error[1]}}}, " for name, vs in failed)
            what = "servable(s)" if initial else "model(s)"
            raise StatusError(Code.UNKNOWN,
                              f"{len(failed)} {what} did not become available: {{{listing}}}")

    def _check_labels(self, config) -> None:
        """A label may only name an AVAILABLE version, as with tensorflow_model_server;
        ``--allow_version_labels_for_unavailable_models`` lifts that for labels that are
        new or keep their version."""
        for mc in config.model_config_list.config:
            current = self.manager.labels(mc.name)
            for label, version in mc.version_labels.items():
                if self.options.allow_version_labels_for_unavailable_models and \
                        current.get(label, version) == version:
                    continue
                if not self.manager.is_available(mc.name, version):
                    raise StatusError(
                        Code.FAILED_PRECONDITION,
                        f"Request to assign label to version {version} of model {mc.name}, "
                        "which is not currently available for inference")

    def _poll_config_file(self, loaded) -> None:
        """Apply the file's config whenever it differs from ``loaded``, the one last taken
        from the file (at start-up, then each reload).  Compared with what was loaded, not
        with the first poll's read: a file rewritten before that poll is a change too.

        A refused file is tried again at every poll (a label may become valid once its
        version loads) but logged once per change of the file or of the reason."""
        path = Path(self.options.model_config_file)
        period = self.options.model_config_file_poll_wait_seconds
        last, refused = loaded, None
        while not self._stop.wait(period):
            try:
                raw = path.read_bytes()
            except OSError as exc:
                raw = exc  # compared by its text below
            try:
                if isinstance(raw, OSError):
                    raise raw
                config = config_files.model_server_config(self.options.model_config_file)
                if config != last:
                    if refused is None or refused[0] != raw:  # not the refused file again
                        log.info("model config file changed; reloading")
                    self.apply_config(config)
                    last = config
                refused = None
            except Exception as exc:  # keep serving the last good config
                seen = (raw if isinstance(raw, bytes) else str(raw), str(exc))
                if seen != refused:
                    log.error("cannot reload %s: %s", self.options.model_config_file, exc)
                    refused = seen

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        from tfdeploy.serving import grpc_api, rest_api

        loaded = self.config
        self.apply_config(loaded, initial=True)
        self.source.start()
        self.accepting = True  # from here a signal means drain (serving/__main__.py)
        self._grpc = grpc_api.serve(self, self.options.grpc_host, self.options.port)
        # tensorflow_model_server's own words: scripts wait for these lines
        log.info("Running gRPC ModelServer at %s:%d ...", self.options.grpc_host,
                 self.options.port)
        if self.options.model_service_port > 0:
            log.info("HandleReloadConfigRequest at %s:%d only (and the UNIX socket)",
                     self.options.model_service_host, self.options.model_service_port)
        elif self.options.model_service_port == -1:
            log.info("HandleReloadConfigRequest on the UNIX socket %s only",
                     self.options.grpc_socket_path)
        if self.options.rest_api_port:
            self._rest = rest_api.serve(self, self.options.rest_api_host,
                                        self.options.rest_api_port)
            log.info("Exporting HTTP/REST API at:%s:%d ...", self.options.rest_api_host,
                     self.options.rest_api_port)
        if self.options.model_config_file and self.options.model_config_file_poll_wait_seconds > 0:
            t = threading.Thread(target=self._poll_config_file, args=(loaded,), daemon=True,
                                 name="config-poll")
            t.start()
            self._threads.append(t)

    def stop(self, grace: float = 30.0) -> None:
        """Stop accepting, let in-flight requests finish (up to ``grace`` s), unload."""
        self._stop.set()
        done = self._grpc.stop(grace) if self._grpc else None
        if self._rest:  # idle connections close at once, in-flight requests finish
            self._rest.stop(grace)
        if done is not None:
            done.wait(grace)
        self.source.stop()
        self.request_log.close()
        self.manager.unload_all()

    # -- requests ------------------------------------------------------------------------
    def status_proto(self, name: str, version: int | None, label: str | None):
        status_pb2 = protos.module("tensorflow_serving.apis.get_model_status_pb2")
        response = status_pb2.GetModelStatusResponse()
        for vs in self.manager.statuses(name, version, label):
            entry = response.model_version_status.add(version=vs.version, state=vs.state)
            entry.status.SetInParent()  # OK is reported explicitly, as TF Serving does
            if vs.error:
                entry.status.error_code = vs.error[0].number
                entry.status.error_message = vs.error[1]
        return response

    def metadata_proto(self, name: str, version: int | None, label: str | None,
                       fields=("signature_def",)):
        meta_pb2 = protos.module("tensorflow_serving.apis.get_model_metadata_pb2")
        unsupported = [f for f in fields if f != "signature_def"]
        if unsupported or not fields:
            raise StatusError(Code.INVALID_ARGUMENT,
                               f"Metadata field {unsupported[0] if unsupported else '(none)'} "
                               "is not supported (supported: signature_def)")
        servable = self.manager.handle(name, version, label)
        response = meta_pb2.GetModelMetadataResponse()
        response.model_spec.name = name
        response.model_spec.version.value = servable.version
        sigs = meta_pb2.SignatureDefMap()
        for key, sd in servable.signature_defs.items():
            sigs.signature_def[key].CopyFrom(sd)
        response.metadata["signature_def"].Pack(sigs)
        return response
