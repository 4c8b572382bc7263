"""Loading models, over real sockets on 127.0.0.1 with real SavedModels: version
directories tensorflow_model_server would not read as versions, loads on loader threads
(a slow load holds up no other model, no status call, no poll), --num_load_threads,
--load_timeout_seconds, and a refused config file logged once per change.

A slow load is made, not timed: a version whose warmup record runs the gated model
(tests/small_models.py), so its load lasts until the test creates the gate file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from servers import ROOT, ServerProcess, http
from small_models import put_version, save_gated_half_plus_two, save_half_plus_two
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

from tfdeploy.tfs import tensors
from tfdeploy.tfs.versions import WARMUP_FILE

#: A status or prediction must answer within this while a load is held (behaviour, not
#: speed: held behind the load, they would wait until the gate opens).
ANSWER_SECONDS = 2.0


@pytest.fixture(scope="module")
def hp2(tmp_path_factory) -> Path:
    return save_half_plus_two(tmp_path_factory.mktemp("hp2") / "model")


@pytest.fixture(scope="module")
def gated(tmp_path_factory) -> Path:
    return save_gated_half_plus_two(tmp_path_factory.mktemp("gated") / "model")


def slow_version(gated: Path, target: Path, gate: Path) -> Path:
    """A copy of the gated model whose warmup record waits for ``gate``: loading it takes
    until that file exists."""
    shutil.copytree(gated, target)
    entry = prediction_log_pb2.PredictionLog()
    request = entry.predict_log.request
    request.inputs["x"].CopyFrom(tensors.to_proto(np.ones((1, 1), np.float32)))
    request.inputs["gate"].CopyFrom(tensors.to_proto(np.array(str(gate).encode(), object)))
    (target / WARMUP_FILE).parent.mkdir(exist_ok=True)
    with tf.io.TFRecordWriter(str(target / WARMUP_FILE)) as writer:
        writer.write(entry.SerializeToString())
    return target


def config_text(*models: tuple[str, Path]) -> str:
    body = "".join(f'config {{ name: "{n}" base_path: "{p}" model_platform: "tensorflow" }} '
                   for n, p in models)
    return f"model_config_list {{ {body}}}\n"


def reload_request(*models: tuple[str, Path]) -> model_management_pb2.ReloadConfigRequest:
    config = model_server_config_pb2.ModelServerConfig()
    for name, path in models:
        config.model_config_list.config.add(name=name, base_path=str(path),
                                            model_platform="tensorflow")
    return model_management_pb2.ReloadConfigRequest(config=config)


def predict_request(model: str) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["x"].CopyFrom(tensors.to_proto(np.array([[1.0]], np.float32)))
    return request


def timed(call, *args, **kwargs):
    """(result, seconds) of one call."""
    started = time.monotonic()
    result = call(*args, **kwargs)
    return result, time.monotonic() - started


def test_directories_that_are_not_versions_are_ignored(hp2, tmp_path):
    """``²`` (str.isdigit() says yes, int() says no) and a 20-digit name (past 2^63-1,
    which a status proto cannot carry) are not versions, at start-up and when they appear
    later: the server starts, every model serves and answers status, another model's new
    version is still found, and each such directory is logged once, without a traceback."""
    odd, other = tmp_path / "odd", tmp_path / "other"
    odd.mkdir()
    other.mkdir()
    put_version(odd, 1, hp2)
    put_version(other, 1, hp2)
    for name in ("²", "99999999999999999999"):
        shutil.copytree(hp2, odd / name)
    config = tmp_path / "models.config"
    config.write_text(config_text(("odd", odd), ("other", other)))  # odd is polled first
    srv = ServerProcess(f"--model_config_file={config}",
                        "--file_system_poll_wait_seconds=0.1", log_dir=tmp_path)
    try:
        assert srv.wait_available(1, model="odd") == {1: "AVAILABLE"}
        assert srv.wait_available(1, model="other") == {1: "AVAILABLE"}
        for name in ("³", "123456789012345678901"):  # appearing at run time
            shutil.copytree(hp2, tmp_path / "staging")
            (tmp_path / "staging").rename(odd / name)
        put_version(other, 2, hp2)
        assert srv.wait_for(lambda s: s.get(2) == "AVAILABLE" and s.get(1) == "END",
                            model="other", timeout=60) == {1: "END", 2: "AVAILABLE"}
        time.sleep(1.0)  # ten more polls of the odd names
        models = model_service_pb2_grpc.ModelServiceStub(
            grpc.insecure_channel(srv.grpc_target))
        status = models.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(
            model_spec={"name": "odd"}), 10)
        assert [(v.version, v.state) for v in status.model_version_status] == [(1, 30)]
        predictions = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(srv.grpc_target))
        assert predictions.Predict(predict_request("odd"), 30).model_spec.version.value == 1
        code, body = http("POST", f"{srv.rest}/v1/models/odd:predict",
                          {"instances": [[3.0]]})
        assert (code, body) == (200, {"predictions": [[3.5]]})
        log = srv.log()
        for name in ("²", "99999999999999999999", "³", "123456789012345678901"):
            assert log.count(f"ignoring directory '{name}'") == 1, log[-3000:]
        assert "Traceback" not in log
    finally:
        assert srv.stop() == 0


def test_a_negative_version_directory_is_a_version(hp2, tmp_path):
    """tensorflow_model_server reads a version directory's name with absl::SimpleAtoi, so
    ``-1`` is version -1: the only version of a model, it loads and serves (gRPC
    addresses it; REST's version grammar is digits, so ``/versions/-1`` is a malformed
    request, while status lists it); a version 1 appearing later is the latest and
    replaces it."""
    base = tmp_path / "neg"
    base.mkdir()
    shutil.copytree(hp2, base / "-1")
    srv = ServerProcess("--model_name=neg", f"--model_base_path={base}",
                        "--file_system_poll_wait_seconds=0.1", log_dir=tmp_path)
    try:
        assert srv.wait_available(-1, model="neg") == {-1: "AVAILABLE"}
        models = model_service_pb2_grpc.ModelServiceStub(
            grpc.insecure_channel(srv.grpc_target))
        status = models.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(
            model_spec={"name": "neg", "version": {"value": -1}}), 10)
        assert [(v.version, v.state) for v in status.model_version_status] == [(-1, 30)]
        predictions = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(srv.grpc_target))
        request = predict_request("neg")
        assert predictions.Predict(request, 30).model_spec.version.value == -1
        request.model_spec.version.value = -1
        response = predictions.Predict(request, 30)
        assert tensors.from_proto(response.outputs["y"]).tolist() == [[2.5]]
        code, body = http("GET", f"{srv.rest}/v1/models/neg")
        assert code == 200 and [v["version"] for v in body["model_version_status"]] == ["-1"]
        assert http("POST", f"{srv.rest}/v1/models/neg:predict", {"instances": [[3.0]]}) \
            == (200, {"predictions": [[3.5]]})
        for method, path in (("GET", "/v1/models/neg/versions/-1"),
                             ("GET", "/v1/models/neg/versions/-1/metadata"),
                             ("POST", "/v1/models/neg/versions/-1:predict")):
            assert http(method, f"{srv.rest}{path}", b"{}" if method == "POST" else None) \
                == (400, {"error": f"Malformed request: {method} {path}"})
        # RE2's \d, unlike Python's, is ASCII: an Arabic-Indic one is no version 1
        code, body = http("GET", f"{srv.rest}/v1/models/neg/versions/%D9%A1")
        assert code == 400 and body["error"].startswith(
            "Malformed request: GET /v1/models/neg/versions/"), (code, body)
        put_version(base, 1, hp2)
        assert srv.wait_for(lambda s: s.get(1) == "AVAILABLE" and s.get(-1) == "END",
                            model="neg", timeout=60) == {-1: "END", 1: "AVAILABLE"}
        assert "Traceback" not in srv.log()
    finally:
        assert srv.stop() == 0


def fast_and_slow(hp2: Path, gated: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """Base paths of a model that loads at once (``fast``) and one whose load waits until
    the returned gate file exists (``slow``), each with version 1."""
    gate = tmp_path / "gate-open"
    fast, slow = tmp_path / "fast", tmp_path / "slow"
    fast.mkdir()
    slow.mkdir()
    put_version(fast, 1, hp2)
    slow_version(gated, slow / "1", gate)
    return gate, fast, slow


def test_a_slow_load_holds_up_nothing_else(hp2, gated, tmp_path):
    """A reload adds a model whose load lasts until a gate opens (--num_load_threads=2).
    Meanwhile, within a couple of seconds each: status of the other model (gRPC and REST,
    with four more reloads waiting on the slow one), its predictions, and a new version
    of it, found by the poll and loaded on the second loader thread.  Once the gate
    opens the reloads return OK and the slow model serves."""
    gate, fast, slow = fast_and_slow(hp2, gated, tmp_path)
    config = tmp_path / "models.config"
    config.write_text(config_text(("fast", fast)))
    srv = ServerProcess(f"--model_config_file={config}", "--num_load_threads=2",
                        "--file_system_poll_wait_seconds=0.1", log_dir=tmp_path)
    channel = grpc.insecure_channel(srv.grpc_target)
    models = model_service_pb2_grpc.ModelServiceStub(channel)
    predictions = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    reloads = []
    try:
        srv.wait_available(1, model="fast")
        both = (("fast", fast), ("slow", slow))
        reloads = [models.HandleReloadConfigRequest.future(reload_request(*both), 300)
                   for _ in range(5)]
        srv.wait_for(lambda s: s == {1: "LOADING"}, model="slow", timeout=60)
        status, seconds = timed(models.GetModelStatus, get_model_status_pb2.
                                GetModelStatusRequest(model_spec={"name": "fast"}), 30)
        assert [v.state for v in status.model_version_status] == [30]
        assert seconds < ANSWER_SECONDS, f"GetModelStatus took {seconds:.1f} s"
        (code, _), seconds = timed(http, "GET", f"{srv.rest}/v1/models/fast", timeout=30)
        assert code == 200 and seconds < ANSWER_SECONDS, f"REST status: {seconds:.1f} s"
        response, seconds = timed(predictions.Predict, predict_request("fast"), 30)
        assert tensors.from_proto(response.outputs["y"]).tolist() == [[2.5]]
        assert seconds < ANSWER_SECONDS, f"Predict took {seconds:.1f} s"
        (code, body), seconds = timed(http, "POST", f"{srv.rest}/v1/models/fast:predict",
                                      {"instances": [[3.0]]}, timeout=30)
        assert (code, body) == (200, {"predictions": [[3.5]]})
        assert seconds < ANSWER_SECONDS, f"REST predict took {seconds:.1f} s"
        put_version(fast, 2, hp2)
        srv.wait_for(lambda s: s == {1: "END", 2: "AVAILABLE"}, model="fast", timeout=60)
        assert srv.status("slow") == {1: "LOADING"}
        assert not any(r.done() for r in reloads), "the gate was open too early"
    finally:
        gate.touch()
        results = [r.exception(120) for r in reloads]
        try:
            assert results == [None] * len(reloads)
            assert srv.wait_available(1, model="slow") == {1: "AVAILABLE"}
        finally:
            assert srv.stop() == 0


def test_load_timeout_seconds_fails_and_abandons_a_load(hp2, gated, tmp_path):
    """--load_timeout_seconds: a load past it ends with DEADLINE_EXCEEDED in the
    version's status while the other model serves; what the abandoned load made is
    dropped once it finishes.  The flag and --num_load_threads refuse bad values."""
    for flag in ("--load_timeout_seconds=-1", "--num_load_threads=-2",
                 "--num_unload_threads=x"):
        proc = subprocess.run([sys.executable, "-m", "tfdeploy.serving", flag,
                               "--model_base_path=/nonexistent"], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and flag.split("=")[0] in proc.stderr, proc.stderr
    gate, fast, slow = fast_and_slow(hp2, gated, tmp_path)
    config = tmp_path / "models.config"
    config.write_text(config_text(("fast", fast)))
    srv = ServerProcess(f"--model_config_file={config}", "--load_timeout_seconds=1",
                        "--max_num_load_retries=0", "--num_load_threads=2",
                        log_dir=tmp_path)
    try:
        srv.wait_available(1, model="fast")
        # added by a reload (at start-up a model that never loads stops the start): the
        # reload fails as tensorflow_model_server's would, and the config stays applied
        models = model_service_pb2_grpc.ModelServiceStub(grpc.insecure_channel(srv.grpc_target))
        with pytest.raises(grpc.RpcError) as err:
            models.HandleReloadConfigRequest(reload_request(("slow", slow), ("fast", fast)),
                                             60)
        assert err.value.code() == grpc.StatusCode.UNKNOWN
        assert err.value.details().startswith(
            "1 model(s) did not become available: {{{name: slow version: 1} due to error: "
            "DEADLINE_EXCEEDED: "), err.value.details()
        srv.wait_for(lambda s: s == {1: "END"}, model="slow", timeout=60)
        code, body = http("GET", f"{srv.rest}/v1/models/slow", timeout=10)
        assert code == 200
        (entry,) = body["model_version_status"]
        assert entry["status"]["error_code"] == "DEADLINE_EXCEEDED"
        assert "--load_timeout_seconds=1" in entry["status"]["error_message"]
        code, body = http("POST", f"{srv.rest}/v1/models/fast:predict",
                          {"instances": [[3.0]]})
        assert (code, body) == (200, {"predictions": [[3.5]]})
        code, body = http("POST", f"{srv.rest}/v1/models/slow:predict",
                          {"instances": [{"x": [1.0], "gate": str(gate)}]})
        assert code == 404, body
        gate.touch()  # the abandoned load finishes; its servable is dropped, not served
        deadline = time.monotonic() + 60
        while "abandoned load of slow version 1 finished" not in srv.log():
            assert time.monotonic() < deadline, srv.log()[-3000:]
            time.sleep(0.2)
        assert srv.status("slow") == {1: "END"}
    finally:
        gate.touch()
        assert srv.stop() == 0


def test_refused_config_file_is_logged_once_per_change(hp2, tmp_path):
    """A config file the server refuses is tried at every poll but logged once per
    change of the file, not once per poll."""
    base = tmp_path / "hp2"
    base.mkdir()
    put_version(base, 1, hp2)
    config = tmp_path / "models.config"
    config.write_text(config_text(("hp2", base)))
    srv = ServerProcess(f"--model_config_file={config}",
                        "--model_config_file_poll_wait_seconds=0.1", log_dir=tmp_path)
    try:
        srv.wait_available(1, model="hp2")

        def replace(text: str) -> None:  # whole files: a poll never reads one half-written
            part = tmp_path / "models.config.part"
            part.write_text(text)
            os.replace(part, config)

        replace("model_config_list { config { name: ")
        time.sleep(1.5)  # fifteen polls of the same refused file
        assert srv.log().count("cannot reload") == 1
        replace(config_text(("hp2", Path("relative/path"))))  # parses, then is refused
        time.sleep(1.5)
        log = srv.log()
        assert log.count("cannot reload") == 2
        assert log.count("model config file changed; reloading") == 1, log
        assert srv.status("hp2") == {1: "AVAILABLE"}
    finally:
        assert srv.stop() == 0


def test_sigterm_while_a_version_loads_exits_cleanly(hp2, gated, tmp_path):
    """SIGTERM while a new version's load is held (its warmup waits for a gate that never
    opens): the server still drains, stops and exits 0, the version that served having
    served until then; the load, which TensorFlow cannot interrupt, is abandoned."""
    gate = tmp_path / "gate-never-opens"
    base = tmp_path / "m"
    base.mkdir()
    put_version(base, 1, hp2)
    srv = ServerProcess("--model_name=m", f"--model_base_path={base}",
                        "--file_system_poll_wait_seconds=0.1", log_dir=tmp_path)
    try:
        srv.wait_available(1, model="m")
        slow_version(gated, tmp_path / "staging", gate)
        (tmp_path / "staging").rename(base / "2")
        srv.wait_for(lambda s: s == {1: "AVAILABLE", 2: "LOADING"}, model="m", timeout=60)
        time.sleep(2.0)  # let the load reach its warmup record, inside TensorFlow
        code, body = http("POST", f"{srv.rest}/v1/models/m:predict", {"instances": [[3.0]]})
        assert (code, body) == (200, {"predictions": [[3.5]]})
    finally:
        assert srv.stop(timeout=60) == 0, srv.log()[-3000:]
    assert "stopped" in srv.log()
