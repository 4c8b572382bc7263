"""``tfdeploy-model-server`` / ``python -m tfdeploy.serving``: tensorflow_model_server's
command line, same flag names, defaults and meaning.

    tfdeploy-model-server --port=8500 --rest_api_port=8501 \\
        --model_name=deeplab --model_base_path=/abs/path/models/deeplab
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from tfdeploy.errors import UserError
from tfdeploy.serving.options import ServerOptions

# Flags tensorflow_model_server has that we accept and ignore, with a warning.
UNIMPLEMENTED_FLAGS = (
    "rest_api_enable_cors_support",
    "tensorflow_session_parallelism", "tensorflow_intra_op_parallelism",
    "tensorflow_inter_op_parallelism", "per_process_gpu_memory_fraction",
    "platform_config_file", "num_load_threads", "num_unload_threads",
    "flush_filesystem_caches",
    "xla_cpu_compilation_enabled", "enable_profiler", "remove_unused_fields_from_bundle_metagraph",
    "use_tflite_model", "tensorflow_session_config_file",
    "mixed_precision", "skip_initialize_tpu", "use_alts_credentials",
    "thread_pool_factory_config_file", "enable_model_warmup_with_session_run",
)


# Of those, the ones that would change what clients get (transport, security, the model
# that serves, its numbers): setting them is an error at start-up, not a warning.
REFUSED_FLAGS = frozenset({
    "use_alts_credentials",
    "use_tflite_model", "platform_config_file", "mixed_precision",
    "rest_api_enable_cors_support",
})


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "t"):
        return True
    if value in ("0", "false", "no", "f"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, like any CLI mistake
        self.exit(2, f"tfdeploy-model-server: error: {message}\n"
                     "(run with --help for the flags)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tfdeploy-model-server", allow_abbrev=False,
                description="TF Serving-compatible model server (gRPC + REST) for SavedModels.",
                epilog=__doc__.split("\n\n", 1)[1])
    d = ServerOptions()  # the defaults live there once
    flag = p.add_argument
    flag("--port", type=int, default=d.port, help=f"gRPC port (default {d.port})")
    flag("--grpc_host", default=d.grpc_host,
         help=f"gRPC bind address (default {d.grpc_host}, where tensorflow_model_server "
         "listens; a tfdeploy flag: 127.0.0.1 for this machine only)")
    flag("--rest_api_port", type=int, default=d.rest_api_port,
         help="REST port; 0 disables REST")
    flag("--rest_api_host", default=d.rest_api_host,
         help=f"REST bind address (default {d.rest_api_host}; a tfdeploy flag)")
    flag("--model_name", default=d.model_name, help="name of the single model")
    flag("--model_base_path", default=d.model_base_path,
         help="base path of the single model's versions")
    flag("--model_config_file", default=d.model_config_file,
         help="ModelServerConfig text proto (many models)")
    flag("--model_config_file_poll_wait_seconds", type=float,
         default=d.model_config_file_poll_wait_seconds,
         help="re-read --model_config_file this often; 0 = never")
    flag("--file_system_poll_wait_seconds", type=float,
         default=d.file_system_poll_wait_seconds,
         help="poll base paths for new versions this often; 0 = once at start")
    def switch(name: str, help: str) -> None:
        """A boolean flag: --name, --name=true or --name=false (the default from d)."""
        flag(f"--{name}", type=_bool, nargs="?", const=True, default=getattr(d, name),
             help=help)

    switch("enable_batching", "merge concurrent requests into batches")
    flag("--batching_parameters_file", default=d.batching_parameters_file,
         help="BatchingParameters text proto")
    switch("enable_model_warmup",
           "replay assets.extra/tf_serving_warmup_requests at load (default true)")
    flag("--monitoring_config_file", default=d.monitoring_config_file,
         help="MonitoringConfig text proto")
    flag("--max_num_load_retries", type=int, default=d.max_num_load_retries,
         help=f"retries of a failed version load (default {d.max_num_load_retries})")
    flag("--load_retry_interval_micros", type=int, default=d.load_retry_interval_micros,
         help="wait between load retries (default 1 minute)")
    flag("--max_request_bytes", type=int, default=d.max_request_bytes,
         help="largest accepted request body / message (tfdeploy extension)")
    flag("--grpc_max_threads", type=int, default=d.grpc_max_threads,
         help="gRPC worker threads")
    flag("--saved_model_tags", default=d.saved_model_tags,
         help="comma-separated tag set of the MetaGraph to load (default serve)")
    switch("enable_signature_method_name_check",
           "Classify/Regress/MultiInference require the signature's method name")
    switch("allow_version_labels_for_unavailable_models",
           "let new version labels name versions not loaded yet")
    flag("--rest_api_timeout_in_ms", type=int, default=d.rest_api_timeout_in_ms,
         help="bound of a REST request's model run (DEADLINE_EXCEEDED after it)")
    flag("--rest_api_num_threads", type=int, default=d.rest_api_num_threads,
         help="REST requests processed at once (default: 4 per core)")
    flag("--prefer_tflite_model", type=_bool, nargs="?", const=True,
         default=d.prefer_tflite_model,
         help="serve a version's model.tflite (TensorFlow Lite) when it has one")
    flag("--ssl_config_file", default=d.ssl_config_file,
         help="SSLConfig text proto: gRPC (port and socket) over TLS")
    flag("--grpc_socket_path", default=d.grpc_socket_path,
         help="also serve gRPC on this UNIX domain socket")
    flag("--grpc_channel_arguments", default=d.grpc_channel_arguments,
         help="comma-separated key=value gRPC server arguments "
              "(e.g. grpc.max_connection_age_ms=2000)")
    flag("--version", action="store_true", help="print the version and exit")
    for name in UNIMPLEMENTED_FLAGS:
        flag(f"--{name}", default=None, nargs="?", const="true", help=argparse.SUPPRESS)
    return p


def options_from_args(argv: list[str] | None = None):
    args = build_parser().parse_args(argv)
    ignored = [n for n in UNIMPLEMENTED_FLAGS if getattr(args, n) is not None]
    values = {k: v for k, v in vars(args).items() if k not in UNIMPLEMENTED_FLAGS}
    values["extra"] = {n: getattr(args, n) for n in ignored}
    values.pop("version")
    return ServerOptions(**values), ignored, args.version


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("tfdeploy.serving")
    options, ignored, show_version = options_from_args(argv)
    if show_version:
        from importlib.metadata import version

        print(f"tfdeploy-model-server {version('tfdeploy')}")
        return 0
    refused = [n for n in ignored if n in REFUSED_FLAGS
               and options.extra[n].lower() not in ("false", "0", "")]
    if refused:
        print(f"tfdeploy-model-server: error: --{refused[0]} is not supported by "
              "tfdeploy-model-server (it would change what clients get); use "
              "tensorflow_model_server for it", file=sys.stderr)
        return 2
    for name in ignored:
        log.warning("flag --%s is not implemented by tfdeploy-model-server; ignored", name)
    from tfdeploy.tfimport import quiet_import_tensorflow

    quiet_import_tensorflow()
    from tfdeploy.serving.server import ModelServer
    from tfdeploy.tfs.codes import StatusError

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        server = ModelServer(options)
        server.start()
    except (StatusError, UserError) as exc:
        print(f"tfdeploy-model-server: error: {exc}", file=sys.stderr)
        return 2
    log.info("serving; pid %d", os.getpid())
    stop.wait()
    log.info("shutting down: draining in-flight requests")
    server.stop()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
