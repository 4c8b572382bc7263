"""int8 exports and TensorFlow's oneDNN kernels (tfdeploy/tfs/onednn.py).

TensorFlow turns oneDNN on by default only on CPUs with AVX512_VNNI, AVX512_BF16,
AVX_VNNI or AMX; an int8 graph needs it.  ``TF_ENABLE_ONEDNN_OPTS=0`` turns it off on any
CPU, so the "off" behaviour is tested everywhere; the "unset" behaviour is the user's
default (on an AVX2-only CPU it exercises the server's and exporter's turning it on).
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from conftest import run_cli
from servers import ServerProcess, http
from small_models import put_version
from tensorflow_serving.apis import prediction_service_pb2_grpc

from tfdeploy.tfs import onednn
from tfdeploy.tfs.requests import images_request

AVX2_ONLY = "processor : 0\nflags : fpu sse4_2 avx avx2 fma\n"


def test_on_by_default_follows_tensorflows_cpu_rule():
    assert not onednn.on_by_default(onednn.parse_cpu_flags(AVX2_ONLY))
    for flag in onednn.DEFAULT_ON_FLAGS:
        assert onednn.on_by_default(frozenset({"avx2", flag}))
    assert onednn.on_by_default(frozenset())  # nothing known: TensorFlow's own default


def test_needs_onednn_names_only_the_onednn_kernels():
    ops = ["Conv2D", "QuantizeV2", "Dequantize", "QuantizedConv2D", "_FusedQuantizedConv2D",
           "QuantizedConv2DWithBiasAndReluAndRequantize", "_QuantizedMatMul", "MatMul"]
    assert onednn.needs_onednn(ops) == ["QuantizedConv2DWithBiasAndReluAndRequantize",
                                        "_FusedQuantizedConv2D", "_QuantizedMatMul"]
    assert onednn.needs_onednn([]) == []


@pytest.mark.parametrize("value, expected", [(None, None), ("1", True), ("true", True),
                                             ("TRUE", True), ("0", False), ("false", False),
                                             ("yes", None), ("", None)])
def test_setting_reads_the_variable_as_tensorflow_does(monkeypatch, value, expected):
    monkeypatch.setenv(onednn.ENV, "")  # recorded, so the test's own changes are undone
    if value is None:
        monkeypatch.delenv(onednn.ENV)
    else:
        monkeypatch.setenv(onednn.ENV, value)
    assert onednn.setting() is expected


def test_turn_on_if_unset_leaves_a_users_choice(monkeypatch):
    monkeypatch.setenv(onednn.ENV, "")  # recorded, so the test's own changes are undone
    monkeypatch.delenv(onednn.ENV)
    assert onednn.turn_on_if_unset() and onednn.setting() is True
    monkeypatch.setenv(onednn.ENV, "0")
    assert not onednn.turn_on_if_unset() and onednn.setting() is False


def test_base_paths_of_flags_and_config_files(tmp_path):
    assert onednn.base_paths("/models/a") == [Path("/models/a")]
    assert onednn.base_paths() == []
    config = tmp_path / "models.config"
    config.write_text('model_config_list { config { name: "a" base_path: "/m/a" }\n'
                      'config { name: "b" base_path: "/m/b" model_platform: "tensorflow" } }\n')
    assert onednn.base_paths("/ignored", str(config)) == [Path("/m/a"), Path("/m/b")]
    config.write_text("model_config_list { config { name: ")
    assert onednn.base_paths("", str(config)) == []  # the server's own reading says why
    assert onednn.base_paths("", str(tmp_path / "missing.config")) == []


@pytest.fixture(scope="module")
def small_exports(tmp_path_factory, small_checkpoint) -> dict[str, Path]:
    """The small checkpoint as float32, int8 (fused kernels) and int8 (portable kernels)."""
    root = tmp_path_factory.mktemp("onednn_exports")
    out = {}
    for name, extra in (("float32", ()), ("int8", ("--precision", "int8")),
                        ("portable", ("--precision", "int8", "--int8-kernels", "portable"))):
        run_cli("export", str(small_checkpoint), "-o", str(root / name), "--min-agreement",
                "0", *extra)
        out[name] = root / name / "1"
    return out


def test_version_needs_onednn_reads_the_exported_graphs(small_exports, tmp_path):
    assert onednn.version_needs_onednn(small_exports["float32"]) == []
    fused = onednn.version_needs_onednn(small_exports["int8"])
    assert "_FusedQuantizedConv2D" in fused and "_QuantizedMatMul" in fused
    portable = onednn.version_needs_onednn(small_exports["portable"])
    assert "QuantizedConv2DWithBiasAndReluAndRequantize" in portable
    assert not any(op.startswith("_") for op in portable)
    assert onednn.version_needs_onednn(small_exports["int8"], tags=("train",)) == []
    assert onednn.version_needs_onednn(tmp_path) == []  # no SavedModel: its load says so
    found = onednn.versions_needing_onednn([small_exports["int8"].parent,
                                            small_exports["float32"].parent, tmp_path / "no"])
    assert found == {small_exports["int8"]: fused}


def test_int8_export_where_onednn_is_off_is_a_one_line_error(tmp_path, small_checkpoint):
    proc = run_cli("export", str(small_checkpoint), "-o", str(tmp_path / "m"), "--precision",
                   "int8", check=False, env={onednn.ENV: "0"})
    assert proc.returncode == 2, proc.stderr
    assert "oneDNN int8 kernels" in proc.stderr and "TF_ENABLE_ONEDNN_OPTS=0" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "m").exists()


def _predict(srv: ServerProcess, image: np.ndarray) -> np.ndarray:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(
        grpc.insecure_channel(srv.grpc_target))
    out = stub.Predict(images_request("deeplab", image), 60.0).outputs["segmentation_map"]
    return np.array(out.int64_val).reshape(image.shape[:2])


def _expected(version: Path, image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    fn = tf.saved_model.load(str(version)).signatures["predict_images"]
    return fn(images=tf.constant(image[None].astype(np.float32)), height=tf.constant(h),
              width=tf.constant(w))["segmentation_map"].numpy()[0]


IMAGE = np.random.default_rng(5).integers(0, 256, (48, 64, 3), dtype=np.uint8)


def test_server_turns_onednn_on_for_a_base_path_with_int8(small_exports, tmp_path):
    """TF_ENABLE_ONEDNN_OPTS unset, as for a user: the int8 version serves the answers of
    the SavedModel run in-process, whatever the CPU, and the log says when the server
    turned oneDNN on (only where this CPU leaves it off)."""
    base = tmp_path / "deeplab"
    base.mkdir()
    put_version(base, 1, small_exports["int8"])
    srv = ServerProcess("--model_name=deeplab", f"--model_base_path={base}",
                        log_dir=tmp_path)
    try:
        srv.wait_available(1)
        np.testing.assert_array_equal(_predict(srv, IMAGE),
                                      _expected(small_exports["int8"], IMAGE))
        turned_on = f"turned on ({onednn.ENV}=1" in srv.log()
        assert turned_on == (not onednn.on_by_default(onednn.cpu_flags())), srv.log()
    finally:
        assert srv.stop() == 0


def test_int8_version_where_onednn_is_off_fails_to_load_and_the_serving_one_stays(
        small_exports, tmp_path):
    """TF_ENABLE_ONEDNN_OPTS=0: TensorFlow would load an int8 graph and fail every run
    ("Missing 0-th output"); the server refuses the version at load, saying what to set,
    and version 1 (float32) keeps serving."""
    base = tmp_path / "deeplab"
    base.mkdir()
    put_version(base, 1, small_exports["float32"])
    srv = ServerProcess("--model_name=deeplab", f"--model_base_path={base}",
                        "--file_system_poll_wait_seconds=0.1", "--max_num_load_retries=0",
                        log_dir=tmp_path, env={onednn.ENV: "0"})
    try:
        srv.wait_available(1)
        expected = _expected(small_exports["float32"], IMAGE)
        np.testing.assert_array_equal(_predict(srv, IMAGE), expected)
        put_version(base, 2, small_exports["portable"])
        srv.wait_for(lambda s: s.get(2) == "END", timeout=60)
        time.sleep(0.3)  # a few more polls: version 2 is not retried, 1 is not unloaded
        code, body = http("GET", f"{srv.rest}/v1/models/deeplab", timeout=10)
        assert code == 200, body
        status = {int(v["version"]): v for v in body["model_version_status"]}
        assert status[1]["state"] == "AVAILABLE"
        message = status[2]["status"]["error_message"]
        assert status[2]["status"]["error_code"] != "OK" and message.startswith("load failed: ")
        assert "oneDNN kernels" in message and "QuantizedConv2DWithBias" in message
        assert f"{onednn.ENV}=1" in message, message
        np.testing.assert_array_equal(_predict(srv, IMAGE), expected)
        assert "turned on" not in srv.log()
    finally:
        assert srv.stop() == 0
