"""Availability under faults, over real sockets on 127.0.0.1: broken versions appearing,
the base path going away, bad configs, version swaps, requests held in flight.  A client
loop keeps sending requests through each fault; none may fail.  Counts and durations are
bounded; requests are held in flight by a model that waits for a gate file, not by
timing."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow  # noqa: F401  (before tensorflow_serving: see tfdeploy/tfs/protos.py)
from servers import ServerProcess, http
from small_models import (
    corrupt_graph,
    put_version,
    save_gated_half_plus_two,
    save_half_plus_two,
    serve_one,
    truncate_variables,
)
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

from tfdeploy.tfs import tensors

MAX_REQUESTS = 4000  # per client thread: bounds the test even if a wait misbehaves


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_half_plus_two(tmp_path_factory.mktemp("hp2") / "model")


class ClientLoop:
    """gRPC and REST Predict calls in two threads until stopped; records every outcome."""

    def __init__(self, srv: ServerProcess, model: str = "hp2"):
        self.srv, self.model = srv, model
        self.stop_event = threading.Event()
        self.failures: list[str] = []
        self.versions: list[int] = []
        self.sent = 0
        self._threads = [threading.Thread(target=self._grpc, daemon=True),
                         threading.Thread(target=self._rest, daemon=True)]

    def __enter__(self) -> ClientLoop:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        for t in self._threads:
            t.join(60)

    def _grpc(self) -> None:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(self.srv.grpc_target))
        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model
        request.inputs["x"].CopyFrom(tensors.to_proto(np.array([[1.0]], np.float32)))
        for _ in range(MAX_REQUESTS):
            if self.stop_event.is_set():
                return
            try:
                response = stub.Predict(request, 30)
                self.versions.append(response.model_spec.version.value)
                y = tensors.from_proto(response.outputs["y"])
                if y.tolist() != [[2.5]]:
                    self.failures.append(f"grpc: wrong answer {y.tolist()}")
            except grpc.RpcError as exc:
                self.failures.append(f"grpc: {exc.code().name} {exc.details()}")
            self.sent += 1

    def _rest(self) -> None:
        url = f"{self.srv.rest}/v1/models/{self.model}:predict"
        for _ in range(MAX_REQUESTS):
            if self.stop_event.is_set():
                return
            code, body = http("POST", url, {"instances": [[3.0]]}, timeout=30)
            if code != 200 or body != {"predictions": [[3.5]]}:
                self.failures.append(f"rest: {code} {body}")
            self.sent += 1

    def wait_sent(self, more: int, timeout: float = 60) -> None:
        """Until ``more`` further requests went out (so the fault really met traffic)."""
        target, deadline = self.sent + more, time.monotonic() + timeout
        while self.sent < target and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.sent >= target, "the client loop stalled"


def _versions(srv: ServerProcess, model: str = "hp2") -> dict[int, dict]:
    code, body = http("GET", f"{srv.rest}/v1/models/{model}", timeout=10)
    assert code == 200, body
    return {int(v["version"]): v for v in body["model_version_status"]}


def test_broken_versions_never_unload_the_serving_one(model_dir, tmp_path):
    broken = tmp_path / "broken"
    base, srv = serve_one(model_dir, tmp_path, "hp2",
                          "--file_system_poll_wait_seconds=0.1", "--max_num_load_retries=1",
                          "--load_retry_interval_micros=100000")
    try:
        srv.wait_available(1, model="hp2")
        with ClientLoop(srv) as loop:
            loop.wait_sent(50)
            # version 2: a saved_model.pb that does not parse
            put_version(base, 2, model_dir)
            corrupt_graph(base / "2")
            srv.wait_for(lambda s: s.get(2) == "END", model="hp2", timeout=60)
            loop.wait_sent(100)
            # version 3: a whole graph but a truncated variables file
            put_version(broken, 3, model_dir)
            truncate_variables(broken / "3")
            (broken / "3").rename(base / "3")
            srv.wait_for(lambda s: s.get(3) == "END", model="hp2", timeout=60)
            time.sleep(0.5)  # the retries of version 3 (0.1 s apart) under traffic
            loop.wait_sent(100)
        assert loop.failures == []
        assert set(loop.versions) == {1}
        status = _versions(srv)
        assert status[1]["state"] == "AVAILABLE"
        for bad in (2, 3):
            assert status[bad]["state"] == "END"
            assert status[bad]["status"]["error_code"] != "OK"
            assert status[bad]["status"]["error_message"].startswith("load failed: ")
        assert "not a valid SavedModel" in status[2]["status"]["error_message"]
        assert "giving up" in srv.log()
        # a good version after the bad ones replaces 1 as usual
        put_version(base, 4, model_dir)
        srv.wait_for(lambda s: s.get(4) == "AVAILABLE" and s.get(1) == "END", model="hp2")
    finally:
        assert srv.stop() == 0


def test_base_path_renamed_away_and_back_keeps_serving(model_dir, tmp_path):
    base, srv = serve_one(model_dir, tmp_path, "hp2", "--file_system_poll_wait_seconds=0.1")
    try:
        srv.wait_available(1, model="hp2")
        with ClientLoop(srv) as loop:
            loop.wait_sent(50)
            base.rename(tmp_path / "away")
            time.sleep(1.5)  # fifteen polls without a base path
            loop.wait_sent(100)
            assert _versions(srv)[1]["state"] == "AVAILABLE"
            (tmp_path / "away").rename(base)
            time.sleep(0.5)
            loop.wait_sent(50)
        assert loop.failures == []
        assert {v: s["state"] for v, s in _versions(srv).items()} == {1: "AVAILABLE"}
        log = srv.log()
        assert log.count("cannot read base path of model hp2") == 1
        assert "base path of model hp2 is readable again" in log
    finally:
        assert srv.stop() == 0


def test_refused_configs_keep_the_one_in_force(model_dir, tmp_path):
    base = tmp_path / "hp2"
    base.mkdir()
    put_version(base, 1, model_dir)
    config = tmp_path / "models.config"
    good = f'model_config_list {{ config {{ name: "hp2" base_path: "{base}" }} }}\n'
    config.write_text(good)
    srv = ServerProcess(f"--model_config_file={config}",
                        "--model_config_file_poll_wait_seconds=0.1", log_dir=tmp_path)
    stub = model_service_pb2_grpc.ModelServiceStub(grpc.insecure_channel(srv.grpc_target))
    try:
        srv.wait_available(1, model="hp2")
        with ClientLoop(srv) as loop:
            loop.wait_sent(50)
            # a file that does not parse: logged, the config in force keeps serving
            config.write_text("model_config_list { config { name: ")
            srv.wait_for(lambda _: "cannot reload" in srv.log(), model="hp2", timeout=30)
            loop.wait_sent(50)
            config.write_text(good)
            # refused reload requests fail with their status and change nothing
            for models, message in (
                    ([("hp2", str(base)), ("hp2", str(base))],
                     "Illegal to list model hp2 multiple times in config list"),
                    ([("hp2", "relative/path")],
                     "Expected model hp2 to have an absolute path or URI; "
                     "got base_path()=relative/path")):
                new = model_server_config_pb2.ModelServerConfig()
                for name, path in models:
                    new.model_config_list.config.add(name=name, base_path=path)
                with pytest.raises(grpc.RpcError) as err:
                    stub.HandleReloadConfigRequest(
                        model_management_pb2.ReloadConfigRequest(config=new), 30)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert err.value.details() == message
            loop.wait_sent(50)
        assert loop.failures == []
        assert {v: s["state"] for v, s in _versions(srv).items()} == {1: "AVAILABLE"}
    finally:
        assert srv.stop() == 0


def test_initial_model_that_never_loads_stops_the_start(model_dir, tmp_path):
    """As tensorflow_model_server: start-up waits for each model's latest version to load
    or fail for good (every retry spent; nothing listens meanwhile), and a failure is the
    error the server exits with, in the official words."""
    import subprocess
    import sys

    from conftest import ROOT

    good, bad = tmp_path / "good", tmp_path / "bad"
    put_version(good, 1, model_dir)
    put_version(bad, 1, model_dir)
    corrupt_graph(bad / "1")
    config = tmp_path / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "good" base_path: "{good}" }} '
                      f'config {{ name: "bad" base_path: "{bad}" }} }}')
    proc = subprocess.run(
        [sys.executable, "-m", "tfdeploy.serving", f"--model_config_file={config}",
         "--port=0", "--grpc_host=127.0.0.1", "--max_num_load_retries=2",
         "--load_retry_interval_micros=100000"],
        cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 2, proc.stderr[-3000:]
    # the loader thread may log its last failure after this line: find it
    (error,) = [line for line in proc.stderr.splitlines()
                if line.startswith("tfdeploy-model-server: error:")]
    assert error.startswith("tfdeploy-model-server: error: 1 servable(s) did not become "
                            "available: {{{name: bad version: 1} due to error: "), error
    assert error.endswith("}, }"), error
    assert proc.stderr.count("failed to load bad version 1") == 3  # the load and 2 retries
    assert "Running gRPC ModelServer" not in proc.stderr


def test_reload_whose_new_model_never_loads_fails_and_keeps_serving(model_dir, tmp_path):
    """HandleReloadConfigRequest adding a model whose latest version fails for good answers
    UNKNOWN in tensorflow_model_server's words; the config stays applied as there (the
    failed version is END in its status), and the model that served never stops."""
    base, srv = serve_one(model_dir, tmp_path, "hp2", "--max_num_load_retries=1",
                          "--load_retry_interval_micros=100000")
    bad = tmp_path / "bad"
    put_version(bad, 1, model_dir)
    corrupt_graph(bad / "1")
    stub = model_service_pb2_grpc.ModelServiceStub(grpc.insecure_channel(srv.grpc_target))
    try:
        srv.wait_available(1, model="hp2")
        new = model_server_config_pb2.ModelServerConfig()
        new.model_config_list.config.add(name="hp2", base_path=str(base))
        new.model_config_list.config.add(name="bad", base_path=str(bad))
        with ClientLoop(srv) as loop:
            loop.wait_sent(20)
            with pytest.raises(grpc.RpcError) as err:
                stub.HandleReloadConfigRequest(
                    model_management_pb2.ReloadConfigRequest(config=new), 60)
            loop.wait_sent(20)
        assert err.value.code() == grpc.StatusCode.UNKNOWN
        details = err.value.details()
        assert details.startswith("1 model(s) did not become available: {{{name: bad "
                                  "version: 1} due to error: "), details
        assert details.endswith("}, }"), details
        assert loop.failures == []
        assert srv.log().count("failed to load bad version 1") == 2  # the load and 1 retry
        assert _versions(srv, "bad")[1]["state"] == "END"
        assert {v: s["state"] for v, s in _versions(srv).items()} == {1: "AVAILABLE"}
    finally:
        assert srv.stop() == 0


# -- requests in flight ------------------------------------------------------------------
@pytest.fixture(scope="module")
def gated_dir(tmp_path_factory) -> Path:
    return save_gated_half_plus_two(tmp_path_factory.mktemp("gated") / "model")


def _gated_request(gate: Path) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "gated"
    request.inputs["x"].CopyFrom(tensors.to_proto(np.array([[1.0]], np.float32)))
    request.inputs["gate"].CopyFrom(tensors.to_proto(np.array(str(gate).encode(), object)))
    return request


def test_model_service_calls_never_wait_behind_predictions(gated_dir, tmp_path):
    """Predictions fill every inference thread (--grpc_max_threads=2) and queue more;
    status, metadata and config reload calls still answer while they are held."""
    gate = tmp_path / "gate-open"
    base, srv = serve_one(gated_dir, tmp_path, "gated", "--grpc_max_threads=2")
    channel = grpc.insecure_channel(srv.grpc_target)
    predictions = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    models = model_service_pb2_grpc.ModelServiceStub(channel)
    held = []
    try:
        srv.wait_available(1, model="gated")
        held = [predictions.Predict.future(_gated_request(gate), 120) for _ in range(4)]
        time.sleep(0.5)  # let them reach the server
        status = models.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(
            model_spec={"name": "gated"}), 30)
        assert [v.state for v in status.model_version_status] == [30]  # AVAILABLE
        metadata = predictions.GetModelMetadata(get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec={"name": "gated"}, metadata_field=["signature_def"]), 30)
        assert metadata.model_spec.version.value == 1
        config = model_server_config_pb2.ModelServerConfig()
        config.model_config_list.config.add(name="gated", base_path=str(base),
                                            model_platform="tensorflow")
        models.HandleReloadConfigRequest(
            model_management_pb2.ReloadConfigRequest(config=config), 30)
        assert _versions(srv, "gated")[1]["state"] == "AVAILABLE"
        assert not any(f.done() for f in held), "the gate was open too early"
    finally:
        gate.touch()
        results = [f.result() for f in held]
        assert srv.stop() == 0
    assert [tensors.from_proto(r.outputs["y"]).tolist() for r in results] == [[[2.5]]] * 4


def test_unloaded_version_finishes_its_requests_in_flight(gated_dir, tmp_path):
    gate = tmp_path / "gate-open"
    base, srv = serve_one(gated_dir, tmp_path, "gated", "--file_system_poll_wait_seconds=0.1")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(
        grpc.insecure_channel(srv.grpc_target))
    rest_result: list = []
    try:
        srv.wait_available(1, model="gated")
        over_grpc = stub.Predict.future(_gated_request(gate), 120)
        over_rest = threading.Thread(target=lambda: rest_result.append(http(
            "POST", f"{srv.rest}/v1/models/gated:predict",
            {"inputs": {"x": [[1.0]], "gate": str(gate)}}, timeout=120)))
        over_rest.start()
        time.sleep(0.5)  # let them reach the server
        put_version(base, 2, gated_dir)
        srv.wait_for(lambda s: s == {1: "END", 2: "AVAILABLE"}, model="gated")
        assert not over_grpc.done() and not rest_result, "the gate was open too early"
        gate.touch()
        response = over_grpc.result()
        over_rest.join(60)
        assert response.model_spec.version.value == 1
        assert tensors.from_proto(response.outputs["y"]).tolist() == [[2.5]]
        code, body = rest_result[0]
        assert code == 200 and body["outputs"]["y"] == [[2.5]], body
    finally:
        gate.touch()
        assert srv.stop() == 0


def test_rest_and_grpc_requests_never_fail_during_version_swaps(model_dir, tmp_path):
    """Each request resolves its version once: swaps under traffic fail nothing."""
    base, srv = serve_one(model_dir, tmp_path, "hp2", "--file_system_poll_wait_seconds=0.1")
    try:
        srv.wait_available(1, model="hp2")
        with ClientLoop(srv) as loop:
            for version in (2, 3, 4, 5):
                loop.wait_sent(30)
                put_version(base, version, model_dir)
                srv.wait_for(lambda s, v=version: s.get(v) == "AVAILABLE"
                             and s.get(v - 1) == "END", model="hp2")
            loop.wait_sent(30)
        assert loop.failures == []
        assert {1, 5} <= set(loop.versions)
    finally:
        assert srv.stop() == 0


def test_rest_timeout_and_grpc_channel_arguments(gated_dir, tmp_path):
    """--rest_api_timeout_in_ms bounds a REST request's model run (504 DEADLINE_EXCEEDED,
    the server serves on); --grpc_channel_arguments reach the gRPC server."""
    gate = tmp_path / "gate-open"
    _, srv = serve_one(gated_dir, tmp_path, "gated", "--rest_api_timeout_in_ms=300",
                       "--grpc_channel_arguments=grpc.max_receive_message_length=4096")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(
        grpc.insecure_channel(srv.grpc_target))
    url = f"{srv.rest}/v1/models/gated:predict"
    try:
        srv.wait_available(1, model="gated")
        code, body = http("POST", url, {"inputs": {"x": [[1.0]], "gate": str(gate)}})
        assert code == 504, body
        gate.touch()
        code, body = http("POST", url, {"inputs": {"x": [[1.0]], "gate": str(gate)}})
        assert code == 200 and body["outputs"]["y"] == [[2.5]], body
        big = _gated_request(gate)
        big.inputs["x"].CopyFrom(tensors.to_proto(np.ones((2000, 1), np.float32)))
        with pytest.raises(grpc.RpcError) as err:
            stub.Predict(big, 30)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert tensors.from_proto(stub.Predict(_gated_request(gate), 30).outputs["y"]) \
            .tolist() == [[2.5]]
    finally:
        gate.touch()
        assert srv.stop() == 0


def test_grpc_on_a_unix_socket_too(model_dir, tmp_path):
    """--grpc_socket_path: the same services on a UNIX domain socket, as the official
    server offers them; the TCP port keeps working."""
    sock = tmp_path / "tfs.sock"
    _, srv = serve_one(model_dir, tmp_path, "hp2", f"--grpc_socket_path={sock}")
    try:
        srv.wait_available(1, model="hp2")
        for target in (f"unix:{sock}", srv.grpc_target):
            channel = grpc.insecure_channel(target)
            request = get_model_status_pb2.GetModelStatusRequest()
            request.model_spec.name = "hp2"
            status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
                request, 30)
            assert [v.state for v in status.model_version_status] == [30]  # AVAILABLE
            predict = predict_pb2.PredictRequest()
            predict.model_spec.name = "hp2"
            predict.inputs["x"].CopyFrom(tensors.to_proto(np.array([[1.0]], np.float32)))
            y = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
                predict, 30).outputs["y"]
            assert tensors.from_proto(y).tolist() == [[2.5]]
            channel.close()
    finally:
        assert srv.stop() == 0


def _self_signed(tmp_path: Path) -> tuple[bytes, bytes]:
    """A key and a self-signed certificate for localhost / 127.0.0.1 (openssl CLI)."""
    import shutil
    import subprocess

    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed: no certificate to serve TLS with")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return key.read_bytes(), cert.read_bytes()


def test_ssl_config_file_serves_grpc_over_tls(model_dir, tmp_path):
    """--ssl_config_file (the official SSLConfig text): gRPC needs TLS with the server's
    certificate; a plaintext client gets no answer.  A broken file stops start-up with
    the official parse message."""
    key, cert = _self_signed(tmp_path)
    config = tmp_path / "ssl.config"
    config.write_text(f"server_key: {json.dumps(key.decode())}\n"
                      f"server_cert: {json.dumps(cert.decode())}\n"
                      "client_verify: false\n")
    _, srv = serve_one(model_dir, tmp_path, "hp2", f"--ssl_config_file={config}")
    try:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "hp2"
        secure = grpc.secure_channel(srv.grpc_target, grpc.ssl_channel_credentials(cert),
                                     options=[("grpc.ssl_target_name_override", "localhost")])
        deadline = time.monotonic() + 120  # REST is HTTPS too (ours): wait over gRPC
        while True:
            try:
                status = model_service_pb2_grpc.ModelServiceStub(secure).GetModelStatus(
                    request, 30)
                if [v.state for v in status.model_version_status] == [30]:
                    break
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline and srv.proc.poll() is None, srv.log()
            time.sleep(0.3)
        assert [v.state for v in status.model_version_status] == [30]
        plain = grpc.insecure_channel(srv.grpc_target)
        with pytest.raises(grpc.RpcError) as err:
            model_service_pb2_grpc.ModelServiceStub(plain).GetModelStatus(request, 5)
        assert err.value.code() in (grpc.StatusCode.UNAVAILABLE,
                                    grpc.StatusCode.DEADLINE_EXCEEDED)
    finally:
        assert srv.stop() == 0
    broken = tmp_path / "broken.config"
    broken.write_text("server_key: 3 4 5\n")
    import subprocess
    import sys

    from conftest import ROOT

    proc = subprocess.run([sys.executable, "-m", "tfdeploy.serving", "--model_name=m",
                           f"--model_base_path={model_dir}", f"--ssl_config_file={broken}",
                           "--port=0"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Error parsing text-format tensorflow.serving.SSLConfig" in proc.stderr


@pytest.mark.parametrize("flag", ["--platform_config_file=/tmp/platform.config",
                                  "--use_tflite_model=true"])
def test_flags_that_would_change_results_are_refused(flag, tmp_path):
    import subprocess
    import sys

    from conftest import ROOT

    proc = subprocess.run([sys.executable, "-m", "tfdeploy.serving", "--model_name=m",
                           f"--model_base_path={tmp_path}", flag],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    name = flag[2:].split("=")[0]
    assert proc.returncode == 2
    assert f"--{name} is not supported by tfdeploy-model-server" in proc.stderr


def test_rest_api_num_threads_bounds_inference_not_status(gated_dir, tmp_path):
    """With --rest_api_num_threads=1 a second REST prediction waits for the held one; a
    status GET answers meanwhile."""
    held_gate, open_gate = tmp_path / "gate-held", tmp_path / "gate-open"
    open_gate.touch()
    _, srv = serve_one(gated_dir, tmp_path, "gated", "--rest_api_num_threads=1")
    url = f"{srv.rest}/v1/models/gated:predict"
    finished: list[str] = []

    def predict(name: str, gate: Path) -> None:
        code, _ = http("POST", url, {"inputs": {"x": [[1.0]], "gate": str(gate)}})
        finished.append(f"{name} {code}")

    try:
        srv.wait_available(1, model="gated")
        threads = [threading.Thread(target=predict, args=("held", held_gate))]
        threads[0].start()
        time.sleep(0.5)  # the held request takes the only slot
        threads.append(threading.Thread(target=predict, args=("second", open_gate)))
        threads[1].start()
        time.sleep(0.5)
        assert _versions(srv, "gated")[1]["state"] == "AVAILABLE"
        assert finished == []
        held_gate.touch()
        for t in threads:
            t.join(60)
        # (both answer once the held one frees the slot; which reply lands first varies)
        assert sorted(finished) == ["held 200", "second 200"]
    finally:
        held_gate.touch()
        assert srv.stop() == 0


def test_client_chosen_names_never_become_metric_labels(model_dir, tmp_path):
    """Predictions for 300 random model names and 300 random signatures (REST and gRPC)
    count under one fixed label: /metrics keeps the configured model's series and one
    ``__unknown__`` series, and does not grow with the names."""
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text('prometheus_config { enable: true, path: "/metrics" }\n')
    _, srv = serve_one(model_dir, tmp_path, "hp2", f"--monitoring_config_file={monitoring}")
    try:
        srv.wait_available(1, model="hp2")
        assert http("POST", f"{srv.rest}/v1/models/hp2:predict",
                    {"instances": [[1.0]]})[0] == 200
        stub = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(srv.grpc_target))
        request = predict_pb2.PredictRequest()
        request.inputs["x"].CopyFrom(tensors.to_proto(np.array([[1.0]], np.float32)))
        for i in range(300):
            code, _ = http("POST", f"{srv.rest}/v1/models/random-{i}:predict",
                           {"instances": [[1.0]]}, timeout=10)
            assert code == 404
            code, _ = http("POST", f"{srv.rest}/v1/models/hp2:predict",
                           {"signature_name": f"sig-{i}", "instances": [[1.0]]}, timeout=10)
            assert code == 400
            request.model_spec.name = f"grpc-random-{i}"
            with pytest.raises(grpc.RpcError):
                stub.Predict(request, 10)
        code, text = http("GET", f"{srv.rest}/metrics")
        assert code == 200
        assert "random-" not in text and "sig-" not in text
        assert 'model_name="__unknown__"' in text
        assert 'signature_name="__unknown__"' in text
        assert 'model_name="hp2"' in text and 'signature_name="serving_default"' in text
        assert len(text) < 64_000, len(text)
    finally:
        assert srv.stop() == 0


@pytest.mark.parametrize("flag, refused", [("--use_alts_credentials=true", True),
                                           ("--enable_serialization_as_tensor_content", True),
                                           ("--num_tflite_pools=2", False)])
def test_every_official_flag_is_refused_or_warned_not_unknown(flag, refused, model_dir,
                                                              tmp_path):
    """Official flags the embedded server does not implement: the ones that would change
    what clients get stop start-up naming the flag; tuning ones start with a warning."""
    import subprocess
    import sys

    from conftest import ROOT

    name = flag[2:].split("=")[0]
    if refused:
        proc = subprocess.run([sys.executable, "-m", "tfdeploy.serving", "--model_name=m",
                               f"--model_base_path={model_dir}", flag],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2
        assert f"--{name} is not supported by tfdeploy-model-server" in proc.stderr
        return
    _, srv = serve_one(model_dir, tmp_path, "hp2", flag)
    try:
        srv.wait_available(1, model="hp2")
        assert f"flag --{name} is not implemented by tfdeploy-model-server" in srv.log()
    finally:
        assert srv.stop() == 0


def _batch_sizes(srv: ServerProcess, model: str = "hp2") -> tuple[float, float]:
    """(batches run, rows run including padding) from the batch-size histogram."""
    code, text = http("GET", f"{srv.rest}/metrics")
    assert code == 200
    values = {}
    for line in text.splitlines():
        if line.startswith(":tensorflow:serving:batching_session:batch_size_") and \
                f'model_name="{model}"' in line:
            values[line.split("{")[0].rsplit("_", 1)[1]] = float(line.split()[-1])
    return values.get("count", 0.0), values.get("sum", 0.0)


def test_batching_parameters_pad_and_split_as_tf_serving(model_dir, tmp_path):
    """allowed_batch_sizes [2, 4] with splitting at 2 rows: one row runs as a batch of 2,
    three rows as two batches of 2 (split, then padded); answers are each caller's own."""
    params = tmp_path / "batching.config"
    params.write_text("max_batch_size { value: 4 } batch_timeout_micros { value: 0 } "
                      "allowed_batch_sizes: [2, 4] "
                      "enable_large_batch_splitting { value: true } "
                      "max_execution_batch_size { value: 2 }\n")
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text('prometheus_config { enable: true, path: "/metrics" }\n')
    _, srv = serve_one(model_dir, tmp_path, "hp2", "--enable_batching",
                       f"--batching_parameters_file={params}",
                       f"--monitoring_config_file={monitoring}")
    try:
        srv.wait_available(1, model="hp2")
        url = f"{srv.rest}/v1/models/hp2:predict"
        assert http("POST", url, {"instances": [[1.0]]}) == (200, {"predictions": [[2.5]]})
        assert _batch_sizes(srv) == (1.0, 2.0)
        assert http("POST", url, {"instances": [[2.0], [4.0], [6.0]]}) == (
            200, {"predictions": [[3.0], [4.0], [5.0]]})
        assert _batch_sizes(srv) == (3.0, 6.0)
        # more rows than max_batch_size: refused, as tensorflow_model_server's queue does
        assert http("POST", url, {"instances": [[1.0]] * 5}) == (
            400, {"error": "Task size 5 is larger than maximum input batch size 4"})
    finally:
        assert srv.stop() == 0


@pytest.mark.parametrize("batching, config, message", [
    ("max_batch_size { value: 8 } allowed_batch_sizes: [2, 4]", "",
     "Last entry in allowed_batch_sizes must match max_batch_size; last entry was 4; "
     "expected 8"),
    ("", "logging_config { sampling_config { sampling_rate: 1.0 } }",
     "Model hp2: log_collector_config type '' is not supported"),
])
def test_batching_and_logging_configs_tf_serving_would_refuse_stop_start_up(
        batching, config, message, model_dir, tmp_path):
    import subprocess
    import sys

    from conftest import ROOT

    params = tmp_path / "batching.config"
    params.write_text(batching)
    models = tmp_path / "models.config"
    models.write_text(f'model_config_list {{ config {{ name: "hp2" base_path: "{model_dir}" '
                      f'model_platform: "tensorflow" {config} }} }}\n')
    proc = subprocess.run([sys.executable, "-m", "tfdeploy.serving", "--port=0",
                           f"--model_config_file={models}", "--enable_batching",
                           f"--batching_parameters_file={params}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr


def test_per_model_batching_parameters_and_a_file_without_enable_batching(model_dir,
                                                                          tmp_path):
    """--enable_per_model_batching_parameters: a version batches with its own
    batching_params.pbtxt, one without the file is not batched (as TF Serving); and a
    --batching_parameters_file without --enable_batching stops start-up, not ignored."""
    import subprocess
    import sys

    from conftest import ROOT

    own, plain = tmp_path / "own", tmp_path / "plain"
    put_version(own, 1, model_dir)
    put_version(plain, 1, model_dir)
    (own / "1" / "batching_params.pbtxt").write_text(
        "max_batch_size { value: 4 } allowed_batch_sizes: [2, 4]\n")
    models = tmp_path / "models.config"
    models.write_text("model_config_list { "
                      + " ".join(f'config {{ name: "{p.name}" base_path: "{p}" '
                                 'model_platform: "tensorflow" }' for p in (own, plain))
                      + " }\n")
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text('prometheus_config { enable: true, path: "/metrics" }\n')
    srv = ServerProcess(f"--model_config_file={models}", "--enable_batching",
                        "--enable_per_model_batching_parameters",
                        f"--monitoring_config_file={monitoring}", log_dir=tmp_path)
    try:
        for name in ("own", "plain"):
            srv.wait_available(1, model=name)
            assert http("POST", f"{srv.rest}/v1/models/{name}:predict",
                        {"instances": [[1.0]]}) == (200, {"predictions": [[2.5]]})
        assert _batch_sizes(srv, "own") == (1.0, 2.0)  # padded to its allowed size 2
        assert _batch_sizes(srv, "plain") == (0.0, 0.0)  # no file: not batched
    finally:
        assert srv.stop() == 0
    params = tmp_path / "batching.config"
    params.write_text("max_batch_size { value: 4 }\n")
    proc = subprocess.run([sys.executable, "-m", "tfdeploy.serving", "--port=0",
                           f"--model_config_file={models}",
                           f"--batching_parameters_file={params}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "batching_parameters_file is set without setting " \
           "server_options.enable_batching to true." in proc.stderr
