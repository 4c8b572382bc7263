"""tensorflow_model_server's command-line flags, in one table.

Every flag the official binary has (and the few tfdeploy-model-server adds) is one row:
its name, what the embedded server does with it, its type, default and help.  The
embedded server's parser and ``ServerOptions``, the runtimes (which flags ``tfdeploy
serve`` writes itself, which pass-through flags after ``serve -- FLAGS`` are valid for
which runtime) and the CLI's help are all derived from it, so what a flag means is
written here once.

Kinds:

- OFFICIAL: a tensorflow_model_server flag the embedded server implements, same meaning.
- OURS: a tfdeploy-model-server extension; tensorflow_model_server would refuse it.
- REFUSED: an official flag that would change what clients get (transport, security,
  the model that serves, its numbers) if it were ignored: setting it is a start-up error.
- WARNED: an official flag about tuning only (threads, caches, profiler): accepted,
  ignored, with a warning naming it.

To add a flag: one ``_row(...)`` line in FLAGS (and its use where it acts).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum

from tfdeploy.tfs.names import GRPC_PORT

DEFAULT_MAX_REQUEST_BYTES = 256 << 20
#: Provisional: one 4096x4096 image (the export's default --max-pixels) in flight at a
#: time, or four 2048x2048 ones.
DEFAULT_MAX_INFLIGHT_PIXELS = 2 * 2048 * 2048  # two images at the export's pixel limit
DEFAULT_MAX_QUEUED_REQUESTS = 64
DEFAULT_REQUEST_LOG_FILE_BYTES = 64 << 20
DEFAULT_REQUEST_LOG_TOTAL_BYTES = 1 << 30
DEFAULT_REQUEST_LOG_QUEUE = 256


def schedulable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, so ``taskset`` and cpusets
    count, not the machine's cores): what tensorflow_model_server's thread defaults are
    multiples of (it counts them the same way)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # no affinity call on this platform
        return os.cpu_count() or 1


class Kind(str, Enum):
    OFFICIAL = "official"
    OURS = "ours"
    REFUSED = "refused"
    WARNED = "warned"


@dataclass(frozen=True)
class ServerFlag:
    name: str
    kind: Kind
    type: type  # bool, int, float or str
    default: object
    help: str
    #: the ``tfdeploy serve`` option that writes this flag (so it is refused after ``--``)
    serve_option: str = ""
    #: only older tensorflow_model_server releases have it (absent from today's binary)
    legacy: bool = False
    #: the smallest value accepted (numbers only; None: any)
    minimum: float | None = None
    #: how --help states a default that depends on the machine (e.g. "4 x CPUs")
    default_text: str = ""

    @property
    def implemented(self) -> bool:
        return self.kind in (Kind.OFFICIAL, Kind.OURS)


OFFICIAL, OURS, REFUSED, WARNED = Kind.OFFICIAL, Kind.OURS, Kind.REFUSED, Kind.WARNED
_row = ServerFlag

FLAGS: tuple[ServerFlag, ...] = (
    # -- transport ------------------------------------------------------------------------
    _row("port", OFFICIAL, int, GRPC_PORT, "gRPC port", "--grpc-port"),
    _row("grpc_host", OURS, str, "0.0.0.0",
         "gRPC bind address (tensorflow_model_server listens on all interfaces; "
         "127.0.0.1 for this machine only)", "--host"),
    _row("rest_api_port", OFFICIAL, int, 0, "REST port; 0 disables REST", "--rest-port"),
    _row("rest_api_host", OURS, str, "0.0.0.0", "REST bind address", "--host"),
    _row("grpc_socket_path", OFFICIAL, str, "", "also serve gRPC on this UNIX domain socket"),
    _row("grpc_channel_arguments", OFFICIAL, str, "",
         "comma-separated key=value gRPC server arguments "
         "(e.g. grpc.max_connection_age_ms=2000)"),
    _row("grpc_max_threads", OFFICIAL, int, 4 * schedulable_cpus(),
         "gRPC inference calls running at once", minimum=1,
         default_text=f"4 x CPUs: {4 * schedulable_cpus()} here"),
    _row("model_service_port", OURS, int, 0,
         "where HandleReloadConfigRequest is served: 0 = on every gRPC address (as "
         "tensorflow_model_server); N = only on --model_service_host:N and the "
         "--grpc_socket_path socket; -1 = only on the socket.  GetModelStatus stays on "
         "every address", minimum=-1),
    _row("model_service_host", OURS, str, "127.0.0.1",
         "bind address of --model_service_port"),
    _row("allowed_model_roots", OURS, str, "",
         "comma-separated directories: a model config (start-up, file or reload) may only "
         "name base paths under them; empty = any path, as tensorflow_model_server"),
    _row("ssl_config_file", OFFICIAL, str, "",
         "SSLConfig text proto: gRPC (port and socket) over TLS, and REST over HTTPS "
         "(ours: tensorflow_model_server's REST stays plain HTTP)", "--ssl-config-file"),
    _row("rest_api_num_threads", OFFICIAL, int, 0,
         "REST requests processed at once (0: 4 x CPUs)"),
    _row("rest_api_timeout_in_ms", OFFICIAL, int, 30_000,
         "bound of a REST request's wait and model run (DEADLINE_EXCEEDED after it)"),
    _row("max_request_bytes", OURS, int, DEFAULT_MAX_REQUEST_BYTES,
         "largest accepted request body / message, and the most a request's tensors may "
         "declare (RESOURCE_EXHAUSTED over it, before anything is allocated)", minimum=1),
    _row("max_response_bytes", OURS, int, DEFAULT_MAX_REQUEST_BYTES,
         "largest response; a larger one is RESOURCE_EXHAUSTED (REST 429)", minimum=1),
    _row("max_inflight_pixels", OURS, int, DEFAULT_MAX_INFLIGHT_PIXELS,
         "server-wide budget of image pixels (else input bytes) being inferred at once; "
         "more waits in the queue (one request over it runs alone)", minimum=1),
    _row("max_queued_requests", OURS, int, DEFAULT_MAX_QUEUED_REQUESTS,
         "inference requests per front end waiting for a slot; more get UNAVAILABLE "
         "(REST: 503 before the body is read)", minimum=0),
    _row("request_log_max_file_bytes", OURS, int, DEFAULT_REQUEST_LOG_FILE_BYTES,
         "request logging (a model's logging_config): a log file is closed and a new one "
         "started past this size", minimum=1),
    _row("request_log_max_total_bytes", OURS, int, DEFAULT_REQUEST_LOG_TOTAL_BYTES,
         "request logging: the most a model's log files take; the oldest are removed",
         minimum=1),
    _row("request_log_queue_size", OURS, int, DEFAULT_REQUEST_LOG_QUEUE,
         "request logging: sampled requests waiting for the writer thread; more are "
         "dropped (and counted), never waited for", minimum=1),
    _row("use_alts_credentials", REFUSED, bool, False, "use Google ALTS credentials"),
    _row("rest_api_enable_cors_support", OFFICIAL, bool, False,
         "CORS headers (any origin) in REST API responses, so pages of other origins "
         "can call it; OPTIONS preflights are answered either way"),
    _row("enable_grpc_healthcheck_service", OFFICIAL, bool, True,
         "the standard gRPC health-check service grpc.health.v1.Health (service \"\" and "
         "one per model); default true here, false in tensorflow_model_server, so "
         "Kubernetes gRPC probes work without it"),
    _row("enable_serialization_as_tensor_content", REFUSED, bool, False,
         "Predict responses in tensor_content"),
    # -- models ---------------------------------------------------------------------------
    _row("model_name", OFFICIAL, str, "default", "name of the single model", "--model-name"),
    _row("model_base_path", OFFICIAL, str, "", "base path of the single model's versions",
         "BASE"),
    _row("model_config_file", OFFICIAL, str, "",
         "ModelServerConfig text proto (many models)", "--model-config-file"),
    _row("model_config_file_poll_wait_seconds", OFFICIAL, float, 0.0,
         "re-read --model_config_file this often; 0 = never", "--config-poll"),
    _row("file_system_poll_wait_seconds", OFFICIAL, float, 1.0,
         "poll base paths for new versions this often; 0 = once at start", "--poll-seconds"),
    _row("max_num_load_retries", OFFICIAL, int, 5, "retries of a failed version load"),
    _row("load_retry_interval_micros", OFFICIAL, int, 60_000_000,
         "wait between load retries (1 minute)"),
    _row("saved_model_tags", OFFICIAL, str, "serve",
         "comma-separated tag set of the MetaGraph to load"),
    _row("enable_model_warmup", OFFICIAL, bool, True,
         "replay assets.extra/tf_serving_warmup_requests at load"),
    _row("enable_signature_method_name_check", OFFICIAL, bool, False,
         "Classify/Regress/MultiInference require the signature's method name"),
    _row("allow_version_labels_for_unavailable_models", OFFICIAL, bool, False,
         "let new version labels name versions not loaded yet"),
    _row("num_load_threads", OFFICIAL, int, 0,
         "threads that load versions; 0 = one, loading in order", minimum=0),
    _row("num_unload_threads", OFFICIAL, int, 0, "threads that unload versions; 0 = one",
         minimum=0),
    _row("load_timeout_seconds", OURS, float, 0.0,
         "a version load taking longer fails (DEADLINE_EXCEEDED) and is abandoned; "
         "0 = no bound", minimum=0),
    _row("prefer_tflite_model", OFFICIAL, bool, False,
         "serve a version's model.tflite (TensorFlow Lite) when it has one"),
    _row("platform_config_file", REFUSED, str, "", "PlatformConfigMap text proto"),
    _row("use_tflite_model", REFUSED, bool, False, "serve model.tflite", legacy=True),
    _row("mixed_precision", REFUSED, str, "", "mixed precision mode"),
    # -- batching and monitoring ----------------------------------------------------------
    _row("enable_batching", OFFICIAL, bool, False,
         "merge concurrent requests into batches", "--enable-batching"),
    _row("batching_parameters_file", OFFICIAL, str, "", "BatchingParameters text proto",
         "--batching-parameters-file"),
    _row("monitoring_config_file", OFFICIAL, str, "", "MonitoringConfig text proto",
         "--monitoring-config-file"),
    _row("tensorflow_session_parallelism", OFFICIAL, int, 0,
         "threads of a version's session, within one op and ops at once (0: auto)"),
    _row("tensorflow_intra_op_parallelism", OFFICIAL, int, 0,
         "threads within one op of a version's session (0: auto)"),
    _row("tensorflow_inter_op_parallelism", OFFICIAL, int, 0,
         "ops of a version's session run at once (0: auto)"),
    _row("enable_per_model_batching_parameters", OFFICIAL, bool, False,
         "with --enable_batching: each version batches with its own batching_params.pbtxt "
         "(none: not batched)"),
    # -- tuning: accepted and ignored -----------------------------------------------------
    _row("flush_filesystem_caches", WARNED, bool, True,
         "flush filesystem caches after the initial load"),
    _row("tensorflow_session_config_file", WARNED, str, "", "ConfigProto text proto"),
    _row("per_process_gpu_memory_fraction", WARNED, float, 0.0, "GPU memory fraction"),
    _row("num_request_iterations_for_warmup", WARNED, int, 0,
         "times each warmup request is replayed"),
    _row("remove_unused_fields_from_bundle_metagraph", WARNED, bool, True,
         "drop unused MetaGraphDef fields after load"),
    _row("num_tflite_pools", WARNED, int, 0, "TFLite interpreter pools"),
    _row("num_tflite_interpreters_per_pool", WARNED, int, 1, "TFLite interpreters per pool"),
    _row("xla_cpu_compilation_enabled", WARNED, bool, False, "XLA:CPU JIT"),
    _row("xla_gpu_compilation_enabled", WARNED, bool, False, "XLA:CPU and XLA:GPU JIT"),
    _row("enable_profiler", WARNED, bool, True, "profiler service"),
    _row("thread_pool_factory_config_file", WARNED, str, "", "ThreadPoolConfig text proto"),
    _row("skip_initialize_tpu", WARNED, bool, False, "skip TPU initialisation"),
    _row("enable_model_warmup_with_session_run", WARNED, bool, False,
         "warmup through Session::Run", legacy=True),
)

BY_NAME: dict[str, ServerFlag] = {f.name: f for f in FLAGS}
assert len(BY_NAME) == len(FLAGS), "a flag is listed twice"


def of_kind(*kinds: Kind) -> Iterator[ServerFlag]:
    return (f for f in FLAGS if f.kind in kinds)


def implemented() -> Iterator[ServerFlag]:
    """The flags that become ``ServerOptions`` fields (official and ours)."""
    return (f for f in FLAGS if f.implemented)


def official_names() -> set[str]:
    """Flags tensorflow_model_server has (whatever the embedded server does with them)."""
    return {f.name for f in FLAGS if f.kind is not OURS}


def flag_name(arg: str) -> str:
    """``--name=value`` -> ``name``; "" for anything that is not a flag."""
    return arg[2:].split("=", 1)[0] if arg.startswith("--") else ""


def format_flag(name: str, value: object) -> str:
    """``--name=value`` as both servers parse it (booleans as true/false); a name not in
    the table is a programming error."""
    flag = BY_NAME[name]
    if flag.type is bool or isinstance(value, bool):
        value = "true" if value else "false"
    elif isinstance(value, float):
        value = f"{value:g}"
    return f"--{name}={value}"


def parse_number(flag: ServerFlag, text: str) -> int | float:
    """A numeric flag's value, checked against its ``minimum``; ValueError otherwise."""
    try:
        value = flag.type(text)
    except ValueError:
        kind = "a whole number" if flag.type is int else "a number"
        raise ValueError(f"expected {kind}, got {text!r}") from None
    if flag.minimum is not None and not (flag.minimum <= value < float("inf")):
        raise ValueError(f"must be at least {flag.minimum:g}, got {text}")
    return value


def parse_bool(text: str) -> bool:
    """tensorflow_model_server's boolean spellings; ValueError otherwise."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "t"):
        return True
    if value in ("0", "false", "no", "f"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def is_set(value: str | None) -> bool:
    """Whether an unimplemented flag's raw value asks for something (not false/0/empty)."""
    return value is not None and value.strip().lower() not in ("false", "0", "f", "no", "")
