"""Fast unit tests of TF Serving's contract (``tfdeploy/tfs``): codecs and codes, no
sockets and no TensorFlow."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest

from tfdeploy.tfs import json_tensors, json_text, proto_json, protos, requests, tensors
from tfdeploy.tfs.codes import Code, StatusError
from tfdeploy.tfs.saved_model import shape_text, signature


# -- codes -------------------------------------------------------------------------------
def test_codes_numbers_match_grpc():
    import grpc

    for status in grpc.StatusCode:
        code = Code(status.name)
        assert code.number == status.value[0]
        assert Code.from_number(code.number) is code


@pytest.mark.parametrize("code, http", [
    ("OK", 200), ("INVALID_ARGUMENT", 400), ("FAILED_PRECONDITION", 400), ("NOT_FOUND", 404),
    ("UNIMPLEMENTED", 501), ("UNAVAILABLE", 503), ("INTERNAL", 500),
    ("RESOURCE_EXHAUSTED", 429), ("DEADLINE_EXCEEDED", 504), ("UNAUTHENTICATED", 401)])
def test_codes_http(code, http):
    assert Code(code).http == http


def test_codes_compare_as_names_and_map_back_from_http():
    assert Code.NOT_FOUND == "NOT_FOUND" and str(Code.NOT_FOUND) == "NOT_FOUND"
    for code in (Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.UNIMPLEMENTED, Code.UNAVAILABLE,
                 Code.INTERNAL, Code.RESOURCE_EXHAUSTED):
        assert Code.from_http(code.http) is code
    assert Code.from_http(418) is Code.INVALID_ARGUMENT and Code.from_http(599) is Code.UNKNOWN
    assert {c for c in Code if c.retryable} == {Code.UNAVAILABLE, Code.CANCELLED,
                                                Code.DEADLINE_EXCEEDED}


# -- tensors -----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.uint8, np.int16,
                                   np.int8, np.int64, np.bool_, np.uint16, np.float16,
                                   np.uint32, np.uint64])
@pytest.mark.parametrize("typed", [False, True])
def test_tensor_round_trip(dtype, typed):
    array = (np.arange(12).reshape(3, 4) % 7).astype(dtype)
    proto = tensors.to_proto(array, typed=typed)
    assert bool(proto.tensor_content) is not typed
    back = tensors.from_proto(proto)
    assert back.dtype == array.dtype and back.shape == (3, 4)
    np.testing.assert_array_equal(back, array)


def _values(dtype: np.dtype, rng: np.random.Generator, n: int) -> np.ndarray:
    """n values of ``dtype`` with its extremes: every varint length, NaN and infinities."""
    if dtype.kind == "f":
        with np.errstate(over="ignore"):  # float16 overflows to inf: one more edge
            a = (rng.standard_normal(n) * 10.0 ** rng.integers(-6, 6, n)).astype(dtype)
        edges = [np.inf, -np.inf, np.nan, -0.0, np.finfo(dtype).max, np.finfo(dtype).tiny]
    elif dtype.kind == "b":
        a, edges = rng.integers(0, 2, n).astype(bool), [True, False]
    else:  # full-range values, small ones (one byte each: class maps) and every boundary
        info = np.iinfo(dtype)
        a = rng.integers(info.min, info.max, n, dtype=dtype, endpoint=True)
        a = np.concatenate([a, (a % 100).astype(dtype)])
        edges = sorted({v for k in range(info.bits + 1) for v in (-(1 << k), (1 << k) - 1, 1 << k)
                        if info.min <= v <= info.max})
    return np.concatenate([np.array(edges, dtype), a])


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.uint8, np.int16,
                                   np.int8, np.int64, np.bool_, np.uint16, np.float16,
                                   np.uint32, np.uint64])
def test_typed_values_encoded_by_numpy_are_what_protobuf_writes(dtype):
    """The numpy encoding of the typed value fields (servers' answers) against protobuf's
    own: the same bytes as filling the field value by value, for every varint length."""
    tensor_pb2 = protos.module("tensorflow.core.framework.tensor_pb2")
    rng = np.random.default_rng(0)
    small = (np.arange(50) % 3).astype(dtype)
    for array in (np.zeros((1, 0), dtype), small.reshape(1, -1),
                  _values(np.dtype(dtype), rng, 3000).reshape(1, -1)):
        enum = tensors.dtype_enum(array)
        reference = tensor_pb2.TensorProto(dtype=enum)
        reference.tensor_shape.dim.add(size=1)
        reference.tensor_shape.dim.add(size=array.shape[1])
        field = getattr(reference, tensors._DTYPES[enum][1])
        field.extend((array.view(np.uint16).astype(np.int32) if enum == 19 else array)
                     .ravel().tolist())
        wire = reference.SerializeToString()
        assert tensors.to_proto(array, typed=True).SerializeToString() == wire
        assert tensor_pb2.TensorProto.FromString(tensors.encoded(array)) == reference
        back = tensors.from_proto(tensor_pb2.TensorProto.FromString(tensors.encoded(array)))
        np.testing.assert_array_equal(back, array)


def test_predict_response_bytes_parse_as_the_response_they_stand_for():
    predict_pb2 = protos.module("tensorflow_serving.apis.predict_pb2")
    head = predict_pb2.PredictResponse()
    head.model_spec.name, head.model_spec.signature_name = "deeplab", "predict_images"
    head.model_spec.version.value = 3
    outputs = {"segmentation_map": np.arange(513 * 513, dtype=np.int64).reshape(1, 513, 513) % 21,
               "mask_png": np.array([b"\x89PNG\r\n", b""], dtype=object),
               "logits": np.linspace(-5, 5, 2 * 3 * 21, dtype=np.float32).reshape(2, 3, 21),
               "\u00e9": np.zeros((0, 4), np.int32)}
    expected = predict_pb2.PredictResponse()
    expected.CopyFrom(head)
    for key, value in outputs.items():
        expected.outputs[key].CopyFrom(tensors.to_proto(value, typed=True))
    parsed = predict_pb2.PredictResponse.FromString(tensors.predict_response(head, outputs))
    assert parsed == expected
    np.testing.assert_array_equal(tensors.from_proto(parsed.outputs["segmentation_map"]),
                                  outputs["segmentation_map"])


def test_string_tensors_and_tf_conventions():
    proto = tensors.to_proto(np.array([b"a", "\u00e9"], dtype=object))
    assert proto.dtype == requests.DT_STRING
    assert list(tensors.from_proto(proto)) == [b"a", "\u00e9".encode()]
    one = tensors.to_proto([5.0], typed=True)
    one.tensor_shape.dim[0].size = 3  # TF's convention: one value fills the shape
    np.testing.assert_array_equal(tensors.from_proto(one), [5.0, 5.0, 5.0])
    bad = tensors.to_proto(np.zeros(4, np.float32), typed=True)
    bad.tensor_shape.dim[0].size = 3
    with pytest.raises(ValueError, match="4 values but its shape"):
        tensors.from_proto(bad)


def test_dtype_names_both_ways():
    for name in ("float", "int64", "string", "uint8", "half", "bool"):
        assert protos.dtype_name(protos.dtype_enum(name)) == name
    with pytest.raises(ValueError, match="unknown tensor dtype"):
        protos.dtype_enum("float33")


# -- requests ----------------------------------------------------------------------------
def test_requests():
    r = requests.encoded_image_request("deeplab", [b"1", b"2"], version=3)
    assert r.model_spec.version.value == 3 and r.model_spec.signature_name == "serving_default"
    assert list(r.inputs["image_bytes"].string_val) == [b"1", b"2"]
    assert [d.size for d in r.inputs["image_bytes"].tensor_shape.dim] == [2]
    assert list(r.output_filter) == ["mask_png"]
    p = requests.predict_request("m", "sig", {"x": np.ones((1, 2), np.float32)},
                                 outputs=["y"])
    assert not p.model_spec.HasField("version") and list(p.output_filter) == ["y"]
    np.testing.assert_array_equal(tensors.from_proto(p.inputs["x"]), [[1, 1]])
    labelled = requests.status_request("m")
    requests.set_model_spec(labelled.model_spec, "m", label="stable")
    assert labelled.model_spec.version_label == "stable"


# -- signatures --------------------------------------------------------------------------
def _signature_def():
    meta_graph_pb2 = protos.module("tensorflow.core.protobuf.meta_graph_pb2")
    sd = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    x = sd.inputs["x"]
    x.dtype = protos.dtype_enum("float")
    for size in (-1, 3):
        x.tensor_shape.dim.add(size=size)
    s = sd.inputs["s"]
    s.dtype = protos.dtype_enum("string")
    s.tensor_shape.unknown_rank = True
    sd.outputs["y"].dtype = protos.dtype_enum("int64")
    return sd


def test_signature_table_and_shape_text():
    sig = signature(_signature_def())
    assert sig.inputs == {"s": ("string", None), "x": ("float", [None, 3])}
    assert sig.outputs == {"y": ("int64", [])}
    assert shape_text([None, 3]) == "[?, 3]" and shape_text(None) == "unknown rank"


# -- REST JSON ---------------------------------------------------------------------------
def test_parse_predict_row_and_columnar():
    sd = _signature_def()
    row = {"instances": [{"x": [1, 2, 3], "s": "a"}, {"x": [4, 5, 6], "s": {"b64": "Yg=="}}]}
    inputs, fmt = json_tensors.parse_predict(row, sd)
    assert fmt == "row" and inputs["x"].dtype == np.float32 and inputs["x"].shape == (2, 3)
    assert list(inputs["s"]) == [b"a", b"b"]
    inputs, fmt = json_tensors.parse_predict({"inputs": {"x": [[1, 2, 3]], "s": ["z"]}}, sd)
    assert fmt == "columnar" and inputs["x"].shape == (1, 3)


@pytest.mark.parametrize("body, message", [
    ({}, "Missing 'inputs' or 'instances' key"),
    ({"inputs": {}, "instances": []}, "expecting only one of 'inputs' or 'instances'"),
    ({"instances": [], }, "non-empty list"),
    ({"instances": [{"x": [1]}, {"s": "a"}]}, "same inputs"),
    ({"inputs": {"x": "text", "s": "a"}}, "not of expected type: float"),
    ({"inputs": {"x": [[1, 2], [3]], "s": "a"}}, "ragged"),
    ({"inputs": {"q": [1], "s": "a"}}, "'q' is not in the signature"),
    ({"inputs": {"x": [1], "s": {"b64": "!!"}}}, "invalid base64"),
    ({"inputs": {"x": [1], "s": {"c": 1}}}, "only {\"b64\""),
    ({"inputs": [1, 2]}, "must be an object"),
])
def test_parse_predict_errors(body, message):
    with pytest.raises(StatusError, match=message.replace("{", r"\{")) as info:
        json_tensors.parse_predict(body, _signature_def())
    assert info.value.code is Code.INVALID_ARGUMENT


def _render(outputs, fmt):
    """The server's predict answer, as the client parses it."""
    return json.loads(json_text.predict_text(outputs, fmt))


def test_render_predict_and_parse_outputs_round_trip():
    outputs = {"mask_png": np.array([b"\x89PNG", b"ok"], dtype=object),
               "name_bytes": np.array([b"abc", b"d"], dtype=object),
               "segmentation_map": np.array([[1, 2], [3, 4]], np.int64)}
    row = _render(outputs, "row")
    assert row["predictions"][0]["mask_png"] == {"b64": base64.b64encode(b"\x89PNG").decode()}
    assert row["predictions"][1]["mask_png"] == "ok"  # valid UTF-8 stays text
    assert row["predictions"][0]["name_bytes"] == {"b64": "YWJj"}  # _bytes: always b64
    col = _render(outputs, "columnar")
    dtypes = {"segmentation_map": protos.dtype_enum("int64"),
              "mask_png": protos.dtype_enum("string"), "name_bytes": protos.dtype_enum("string")}
    back = json_tensors.parse_outputs(col, dtypes)
    for key, value in outputs.items():
        assert back[key].dtype == value.dtype
        np.testing.assert_array_equal(back[key], value)
    single = _render({"y": np.array([1.5], np.float32)}, "columnar")
    assert single == {"outputs": [1.5]}
    assert json_tensors.parse_outputs(single, outputs=["y"])["y"].tolist() == [1.5]


def test_render_row_needs_a_common_batch_size():
    with pytest.raises(StatusError, match="first dimension"):
        json_text.predict_text({"a": np.zeros(2), "b": np.zeros(3)}, "row")


def test_predict_body_is_what_the_server_parses():
    sd = _signature_def()
    inputs = {"x": np.array([[1, 2, 3]], np.float32), "s": np.array([b"\xff\x00"], object)}
    body = json_tensors.predict_body("sig", inputs)
    assert body["signature_name"] == "sig" and body["inputs"]["s"] == [{"b64": "/wA="}]
    parsed, _ = json_tensors.parse_predict(body, sd)
    np.testing.assert_array_equal(parsed["x"], inputs["x"])
    assert list(parsed["s"]) == [b"\xff\x00"]


def test_status_json_round_trip():
    status_pb2 = protos.module("tensorflow_serving.apis.get_model_status_pb2")
    response = status_pb2.GetModelStatusResponse()
    response.model_version_status.add(version=2, state=30).status.SetInParent()
    as_json = json.loads(proto_json.message_text(response))
    assert as_json["model_version_status"][0]["state"] == "AVAILABLE"
    assert as_json["model_version_status"][0]["version"] == "2"
    back = json_tensors.json_to_message(as_json, status_pb2.GetModelStatusResponse())
    assert requests.version_states(back) == {2: "AVAILABLE"}


def test_tf_error_message_keeps_the_ops_words():
    from tfdeploy.tfs.codes import tf_error_message

    raw = ("{{function_node __wrapped__SaveV2_dtypes_1_device_/job:localhost/replica:0}} "
           "/m/variables/part-0.data; File too large [Op:SaveV2]")
    assert tf_error_message(Exception(raw)) == "/m/variables/part-0.data; File too large"
    graph = ("Graph execution error:\n\nDetected at node DecodeImage defined at:\n  File \"x\"\n"
             "Unknown image file format. One of JPEG, PNG, GIF, BMP required.\n"
             "\t [[{{node DecodeImage}}]] [Op:__inference_serve_1]")
    assert tf_error_message(Exception(graph)) == \
        "Unknown image file format. One of JPEG, PNG, GIF, BMP required."


# -- server flags ------------------------------------------------------------------------
MIRROR = Path("/work/.mirror/tensorflow+serving/repo")

#: tensorflow_model_server's flags (model_servers/main.cc), our own record of them for
#: machines without a TF Serving checkout; test_flag_table_matches_main_cc checks it there.
OFFICIAL_FLAGS = {
    "port", "grpc_socket_path", "rest_api_port", "rest_api_num_threads",
    "rest_api_timeout_in_ms", "rest_api_enable_cors_support", "enable_batching",
    "allow_version_labels_for_unavailable_models", "batching_parameters_file",
    "enable_per_model_batching_parameters", "model_config_file",
    "model_config_file_poll_wait_seconds", "model_name", "model_base_path",
    "num_load_threads", "num_unload_threads", "max_num_load_retries",
    "load_retry_interval_micros", "file_system_poll_wait_seconds", "flush_filesystem_caches",
    "tensorflow_session_parallelism", "tensorflow_session_config_file",
    "tensorflow_intra_op_parallelism", "tensorflow_inter_op_parallelism",
    "use_alts_credentials", "ssl_config_file", "platform_config_file",
    "per_process_gpu_memory_fraction", "saved_model_tags", "grpc_channel_arguments",
    "grpc_max_threads", "enable_model_warmup", "num_request_iterations_for_warmup",
    "monitoring_config_file", "remove_unused_fields_from_bundle_metagraph",
    "prefer_tflite_model", "num_tflite_pools", "num_tflite_interpreters_per_pool",
    "enable_signature_method_name_check", "xla_cpu_compilation_enabled",
    "xla_gpu_compilation_enabled", "enable_profiler", "thread_pool_factory_config_file",
    "mixed_precision", "skip_initialize_tpu", "enable_grpc_healthcheck_service",
    "enable_serialization_as_tensor_content",
}


def _current_official(table) -> set[str]:
    return {f.name for f in table if f.kind != "ours" and not f.legacy}


def test_flag_table_has_every_official_flag():
    from tfdeploy.tfs import flags

    assert _current_official(flags.FLAGS) == OFFICIAL_FLAGS
    for f in flags.FLAGS:
        assert f.type in (bool, int, float, str) and isinstance(f.default, f.type), f
        assert f.help and f.kind in tuple(flags.Kind)


@pytest.mark.skipif(not MIRROR.is_dir(), reason="no TF Serving mirror on this machine")
def test_flag_table_matches_main_cc():
    """The flags tensorflow_model_server defines are the table's (version aside)."""
    import re
    import subprocess

    from tfdeploy.tfs import flags

    main_cc = subprocess.run(
        ["git", f"--git-dir={MIRROR}", "show",
         "HEAD:tensorflow_serving/model_servers/main.cc"],
        capture_output=True, text=True, check=True).stdout
    defined = set(re.findall(r'tensorflow::Flag\(\s*"(\w+)"', main_cc)) - {"version"}
    assert defined == OFFICIAL_FLAGS == _current_official(flags.FLAGS)


def test_grpc_max_threads_defaults_to_four_per_schedulable_cpu():
    """tensorflow_model_server's default is 4 x NumSchedulableCPUs() (model_servers/
    server.h): the CPUs the process may run on, so a server pinned to one CPU gets 4;
    every explicit value (1 and up) is kept."""
    import os
    import subprocess
    import sys

    from tfdeploy.serving.__main__ import build_parser, options_from_args
    from tfdeploy.serving.options import ServerOptions
    from tfdeploy.tfs import flags

    cpus = len(os.sched_getaffinity(0))
    assert flags.schedulable_cpus() == cpus
    assert flags.BY_NAME["grpc_max_threads"].default == 4 * cpus
    assert ServerOptions().grpc_max_threads == 4 * cpus
    assert options_from_args(["--model_base_path=/m"])[0].grpc_max_threads == 4 * cpus
    for value in (1, 3, 32, 1000):
        options = options_from_args(["--model_base_path=/m", f"--grpc_max_threads={value}"])[0]
        assert options.grpc_max_threads == value
    with pytest.raises(SystemExit):
        options_from_args(["--model_base_path=/m", "--grpc_max_threads=0"])
    assert "(default 4 x CPUs" in " ".join(build_parser().format_help().split())
    pinned = subprocess.run(
        [sys.executable, "-c", "from tfdeploy.tfs import flags; "
         "print(flags.BY_NAME['grpc_max_threads'].default)"],
        preexec_fn=lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}),
        capture_output=True, text=True, check=True)
    assert pinned.stdout.strip() == "4"


@pytest.mark.skipif(not MIRROR.is_dir(), reason="no TF Serving mirror on this machine")
def test_thread_defaults_match_server_h():
    """The defaults above are tensorflow_model_server's (its Server::Options)."""
    import subprocess

    server_h = subprocess.run(
        ["git", f"--git-dir={MIRROR}", "show",
         "HEAD:tensorflow_serving/model_servers/server.h"],
        capture_output=True, text=True, check=True).stdout
    assert "grpc_max_threads = 4.0 * port::NumSchedulableCPUs();" in server_h
    assert "http_num_threads = 4.0 * port::NumSchedulableCPUs();" in server_h


def test_parser_options_and_runtimes_derive_from_the_flag_table():
    from tfdeploy.runtime.base import known_server_flags, pass_through_help
    from tfdeploy.serving.__main__ import build_parser, options_from_args
    from tfdeploy.serving.options import ServerOptions
    from tfdeploy.tfs import flags

    parsed = {opt[2:] for action in build_parser()._actions for opt in action.option_strings
              if opt.startswith("--")} - {"help", "version"}
    assert parsed == set(flags.BY_NAME) == known_server_flags()
    defaults = ServerOptions()
    for f in flags.implemented():
        assert getattr(defaults, f.name) == f.default
    options, ignored, _ = options_from_args(["--model_base_path=/m", "--num_tflite_pools=2",
                                             "--enable_batching", "--port=9"])
    assert (options.port, options.enable_batching, ignored) == (9, True, ["num_tflite_pools"])
    assert options.extra == {"num_tflite_pools": "2"}
    text = pass_through_help()
    assert "--rest_api_timeout_in_ms" in text and "--max_request_bytes" in text
    assert "--port," not in text  # serve sets it itself
    assert flags.format_flag("enable_batching", True) == "--enable_batching=true"
    assert flags.format_flag("file_system_poll_wait_seconds", 1.0) == \
        "--file_system_poll_wait_seconds=1"


# -- version directory names -------------------------------------------------------------
@pytest.mark.parametrize("name, version", [
    ("1", 1), ("007", 7), ("+3", 3), (" 12 ", 12), ("0", 0), ("-2", -2),
    ("9223372036854775807", (1 << 63) - 1), ("-9223372036854775808", -(1 << 63)),
    ("9223372036854775808", None), ("99999999999999999999", None), ("²", None),
    ("١٢", None), ("１", None), ("1a", None), ("0x1", None), ("", None), ("+", None),
    ("1.0", None), (".staging-3", None)])
def test_parse_version_reads_names_as_tensorflow_model_server(name, version):
    """ASCII digits with an optional sign and ASCII spaces, within int64: what
    tensorflow_model_server's file-system source reads; str.isdigit() digits are not."""
    from tfdeploy.tfs.versions import parse_version

    assert parse_version(name) == version


def test_scan_versions_reports_names_that_look_like_versions(tmp_path):
    from tfdeploy.tfs.versions import numeric_dirs, scan_versions

    for name in ("1", "01", "3", "²", "99999999999999999999", ".staging-4", "tmp"):
        (tmp_path / name).mkdir()
    (tmp_path / "5").write_text("a file, not a version directory")
    found, ignored = scan_versions(tmp_path)
    assert found == {1: tmp_path / "1", 3: tmp_path / "3"}  # "1" sorts after "01"
    assert sorted(name for name, _ in ignored) == ["01", "99999999999999999999", "²"]
    assert numeric_dirs(tmp_path) == found


# -- image sizes from headers (the pixel budget's cost) ------------------------------------
@pytest.mark.parametrize("fmt, kw", [("PNG", {}), ("JPEG", {}), ("JPEG", {"progressive": True}),
                                     ("GIF", {}), ("BMP", {}), ("WEBP", {"lossless": False}),
                                     ("WEBP", {"lossless": True})])
def test_image_size_reads_every_format_without_decoding(fmt, kw):
    import io

    from PIL import Image

    from tfdeploy.tfs.image_size import image_hw, image_pixels

    buf = io.BytesIO()
    Image.new("RGB", (401, 299), (9, 99, 199)).save(buf, format=fmt, **kw)
    data = buf.getvalue()
    assert image_hw(data) == (299, 401)
    assert image_pixels(data) == 299 * 401
    assert image_hw(data[:8]) is None  # cut short: unknown, never an exception


def test_image_size_of_non_images():
    from tfdeploy.tfs.image_size import image_hw

    for data in (b"", b"\xff\xd8", b"\x89PNG\r\n\x1a\n", b"GIF8", b"hello world" * 10):
        assert image_hw(data) is None


def test_declared_bytes_are_checked_before_allocating():
    proto = tensors.to_proto(np.array([1.0], np.float32))
    proto.tensor_shape.dim[0].size = 25_000_000
    del proto.float_val[:]
    proto.float_val.append(1.0)
    proto.ClearField("tensor_content")
    assert tensors.declared_bytes(proto) == 100_000_000
    with pytest.raises(StatusError) as err:
        tensors.from_proto(proto, max_bytes=1 << 20)
    assert err.value.code == Code.RESOURCE_EXHAUSTED
    strings = tensors.to_proto(np.array([b"abc"] * 3, object))
    assert tensors.declared_bytes(strings) == 3 * tensors.OBJECT_BYTES + 9
    assert tensors.from_proto(strings, max_bytes=33).tolist() == [b"abc"] * 3


def test_signature_defs_are_copies_that_let_the_saved_model_go():
    """A Servable keeps its SignatureDefs for as long as it serves; a sub-message of the
    parsed SavedModel would keep all of it alive (protobuf's arena: an int8 graph's
    constants, 37 MB for resnet_v2_50), so they are copies."""
    from tfdeploy.tfs.saved_model import signature_defs

    meta_graph_pb2 = protos.module("tensorflow.core.protobuf.meta_graph_pb2")
    mg = meta_graph_pb2.MetaGraphDef()
    mg.signature_def["serving_default"].CopyFrom(_signature_def())
    mg.signature_def["__saved_model_init_op"].method_name = "init"
    defs = signature_defs(mg)
    assert list(defs) == ["serving_default"] and defs["serving_default"] == _signature_def()
    mg.signature_def["serving_default"].method_name = "changed"  # the copy is not a view
    del mg
    assert defs["serving_default"].method_name == "tensorflow/serving/predict"
