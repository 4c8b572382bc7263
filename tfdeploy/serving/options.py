"""Server options: the parsed command line, free of TensorFlow so flag errors are instant."""

from __future__ import annotations

from dataclasses import dataclass, field

from tfdeploy.tfs.names import GRPC_PORT

DEFAULT_MAX_REQUEST_BYTES = 256 << 20


@dataclass
class ServerOptions:
    port: int = GRPC_PORT
    grpc_host: str = "0.0.0.0"
    rest_api_port: int = 0
    rest_api_host: str = "0.0.0.0"
    model_name: str = "default"
    model_base_path: str = ""
    model_config_file: str = ""
    model_config_file_poll_wait_seconds: float = 0
    file_system_poll_wait_seconds: float = 1
    enable_batching: bool = False
    batching_parameters_file: str = ""
    enable_model_warmup: bool = True
    monitoring_config_file: str = ""
    max_num_load_retries: int = 5
    load_retry_interval_micros: int = 60_000_000
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    grpc_max_threads: int = 32
    saved_model_tags: str = "serve"
    prefer_tflite_model: bool = False
    enable_signature_method_name_check: bool = False
    allow_version_labels_for_unavailable_models: bool = False
    rest_api_timeout_in_ms: int = 30_000
    rest_api_num_threads: int = 0
    grpc_channel_arguments: str = ""
    grpc_socket_path: str = ""
    ssl_config_file: str = ""
    extra: dict = field(default_factory=dict)
