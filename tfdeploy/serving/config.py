"""Server configuration files, in TF Serving's own text-proto formats.

``ModelServerConfig`` comes from tensorflow-serving-api.  The monitoring and batching
messages are not shipped in that package, so we declare them here with the official
package, names and field numbers: text files written for tensorflow_model_server parse
unchanged.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    text_format,
    wrappers_pb2,  # noqa: F401  (registers wrappers.proto in the pool)
)

from tfdeploy.errors import UserError

_F = descriptor_pb2.FieldDescriptorProto


@cache
def _messages() -> dict[str, type]:
    fdp = descriptor_pb2.FileDescriptorProto(
        name="tfdeploy/serving_config_compat.proto", package="tensorflow.serving",
        syntax="proto3", dependency=["google/protobuf/wrappers.proto"])

    def msg(name: str, fields: list[tuple[str, int, int, str | None, bool]]):
        m = fdp.message_type.add(name=name)
        for fname, number, ftype, type_name, repeated in fields:
            f = m.field.add(name=fname, number=number, type=ftype,
                            label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)
            if type_name:
                f.type_name = type_name

    msg("PrometheusConfig", [("enable", 1, _F.TYPE_BOOL, None, False),
                             ("path", 2, _F.TYPE_STRING, None, False)])
    msg("MonitoringConfig", [("prometheus_config", 1, _F.TYPE_MESSAGE,
                              ".tensorflow.serving.PrometheusConfig", False)])
    i64, s = ".google.protobuf.Int64Value", ".google.protobuf.StringValue"
    b = ".google.protobuf.BoolValue"
    msg("BatchingParameters", [
        ("max_batch_size", 1, _F.TYPE_MESSAGE, i64, False),
        ("batch_timeout_micros", 2, _F.TYPE_MESSAGE, i64, False),
        ("max_enqueued_batches", 3, _F.TYPE_MESSAGE, i64, False),
        ("num_batch_threads", 4, _F.TYPE_MESSAGE, i64, False),
        ("thread_pool_name", 5, _F.TYPE_MESSAGE, s, False),
        ("allowed_batch_sizes", 6, _F.TYPE_INT64, None, True),
        ("pad_variable_length_inputs", 7, _F.TYPE_BOOL, None, False),
        ("enable_large_batch_splitting", 8, _F.TYPE_MESSAGE, b, False),
        ("max_execution_batch_size", 9, _F.TYPE_MESSAGE, i64, False),
    ])
    msg("SSLConfig", [("server_key", 1, _F.TYPE_STRING, None, False),
                      ("server_cert", 2, _F.TYPE_STRING, None, False),
                      ("custom_ca", 3, _F.TYPE_STRING, None, False),
                      ("client_verify", 4, _F.TYPE_BOOL, None, False)])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(
        wrappers_pb2.DESCRIPTOR.serialized_pb))
    pool.Add(fdp)
    return {name: message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"tensorflow.serving.{name}"))
        for name in ("MonitoringConfig", "BatchingParameters", "SSLConfig")}


def _parse(path: str | Path, message, what: str):
    p = Path(path)
    try:
        text_format.Parse(p.read_text(), message)
    except OSError as exc:
        raise UserError(f"{what} {p}: {exc.strerror}") from None
    except text_format.ParseError as exc:
        raise UserError(f"{what} {p}: Error parsing text-format "
                        f"{message.DESCRIPTOR.full_name}: {exc}") from None
    return message


def monitoring_config(path: str | Path):
    return _parse(path, _messages()["MonitoringConfig"](), "--monitoring_config_file")


def ssl_config(path: str | Path):
    """tensorflow_model_server's SSLConfig text (server_key, server_cert, custom_ca,
    client_verify), whose message the pip tensorflow-serving-api does not ship."""
    config = _parse(path, _messages()["SSLConfig"](), "--ssl_config_file")
    if not config.server_key or not config.server_cert:  # both front ends need both
        raise UserError(f"--ssl_config_file {path}: server_key and server_cert are required")
    return config


def batching_parameters(path: str | Path | None):
    msg = _messages()["BatchingParameters"]()
    return _parse(path, msg, "--batching_parameters_file") if path else msg


def model_server_config(path: str | Path):
    from tensorflow_serving.config import model_server_config_pb2

    return _parse(path, model_server_config_pb2.ModelServerConfig(), "--model_config_file")


def single_model_config(name: str, base_path: str):
    """What --model_name/--model_base_path mean: one model, latest version."""
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name, model.base_path, model.model_platform = name, base_path, "tensorflow"
    return config
