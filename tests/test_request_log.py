"""Request logging (a model's ``logging_config``): real servers on 127.0.0.1, gRPC and REST,
logs read back with TensorFlow's TFRecordDataset and tensorflow-serving-api's
PredictionLog, a log replayed as a version's warmup, rotation and cap, and a full writer
queue that drops and counts."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from servers import ServerProcess, http
from small_models import half_plus_two, put_version, save_tf1_half_plus_two
from tensorflow_serving.apis import (
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from tfdeploy.tfs import tensors


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tf1_half_plus_two(tmp_path_factory.mktemp("hp2") / "model")


def _config(tmp_path: Path, base: Path, models: dict[str, str]) -> Path:
    """A model config file: ``{name: logging_config text}``, all on ``base``."""
    body = "".join(f'config {{ name: "{name}" base_path: "{base}" model_platform: '
                   f'"tensorflow" {logging} }} ' for name, logging in models.items())
    path = tmp_path / "models.config"
    path.write_text(f"model_config_list {{ {body} }}\n")
    return path


def _logging(rate: float, prefix: Path) -> str:
    return (f"logging_config {{ sampling_config {{ sampling_rate: {rate} }} "
            f'log_collector_config {{ type: "file" filename_prefix: "{prefix}" }} }}')


def _read_logs(prefix: Path) -> list:
    """Every record of ``prefix``'s files, oldest file first, read by TensorFlow."""
    files = sorted(prefix.parent.glob(prefix.name + ".*.tfrecord"),
                   key=lambda p: int(p.name.split(".")[-2]))
    return [prediction_log_pb2.PredictionLog.FromString(r.numpy())
            for f in files for r in tf.data.TFRecordDataset(str(f))]


def _wait_records(prefix: Path, count: int, timeout: float = 30) -> list:
    deadline = time.monotonic() + timeout
    while True:
        records = _read_logs(prefix)
        if len(records) >= count or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def _predict(stub, model: str, x: list[float]):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["x"].CopyFrom(tensors.to_proto(np.array([[v] for v in x], np.float32)))
    return stub.Predict(request, timeout=30)


def test_sampled_requests_are_logged_over_grpc_and_rest(model_dir, tmp_path):
    """Rate 1: every Predict (gRPC and REST) and Regress is a PredictionLog record with
    its request, response and log_metadata; rate 0 logs nothing."""
    base = tmp_path / "base"
    put_version(base, 3, model_dir)
    logs = tmp_path / "logs"
    config = _config(tmp_path, base, {"all": _logging(1.0, logs / "all"),
                                      "none": _logging(0.0, logs / "none")})
    srv = ServerProcess(f"--model_config_file={config}", log_dir=tmp_path)
    try:
        srv.wait_available(model="all")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(srv.grpc_target))
        before = time.time()
        _predict(stub, "all", [1.0, 2.0])
        code, body = http("POST", f"{srv.rest}/v1/models/all:predict",
                          {"instances": [[4.0]]})
        assert code == 200, body
        regress = regression_pb2.RegressionRequest()
        regress.model_spec.name = "all"
        regress.model_spec.signature_name = "regress_x_to_y"
        regress.input.example_list.examples.add().features.feature["x"].float_list.value \
            .append(6.0)
        stub.Regress(regress, timeout=30)
        for _ in range(3):
            _predict(stub, "none", [1.0])
            assert http("POST", f"{srv.rest}/v1/models/none:predict",
                        {"instances": [[1.0]]})[0] == 200
        records = _wait_records(logs / "all", 3)
    finally:
        assert srv.stop() == 0
    assert len(records) == 3
    grpc_log, rest_log, regress_log = records
    for entry in records:
        meta = entry.log_metadata
        assert (meta.model_spec.name, meta.model_spec.version.value) == ("all", 3)
        assert meta.sampling_config.sampling_rate == 1.0
        assert list(meta.saved_model_tags) == ["serve"]
        assert before - 1 <= meta.timestamp_secs <= time.time()
    for entry, x in ((grpc_log, [[1.0], [2.0]]), (rest_log, [[4.0]])):
        assert entry.WhichOneof("log_type") == "predict_log"
        assert entry.log_metadata.model_spec.signature_name == "serving_default"
        request, response = entry.predict_log.request, entry.predict_log.response
        assert request.model_spec.version.value == 3
        np.testing.assert_array_equal(tensors.from_proto(request.inputs["x"]), x)
        np.testing.assert_allclose(tensors.from_proto(response.outputs["y"]),
                                   half_plus_two(np.array(x)))
    assert regress_log.WhichOneof("log_type") == "regress_log"
    assert regress_log.log_metadata.model_spec.signature_name == "regress_x_to_y"
    assert regress_log.regress_log.response.result.regressions[0].value == pytest.approx(5.0)
    assert not list(logs.glob("none.*"))


def test_a_log_replays_as_the_warmup_of_a_version(model_dir, tmp_path):
    """A log file copied to a version's assets.extra/tf_serving_warmup_requests is
    replayed when that version loads (the format is the warmup file's)."""
    base = tmp_path / "base"
    put_version(base, 1, model_dir)
    logs = tmp_path / "logs"
    config = _config(tmp_path, base, {"hp2": _logging(1.0, logs / "hp2")})
    srv = ServerProcess(f"--model_config_file={config}", "--file_system_poll_wait_seconds=1",
                        log_dir=tmp_path)
    try:
        srv.wait_available(model="hp2")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(srv.grpc_target))
        for x in range(4):
            _predict(stub, "hp2", [float(x)])
        assert len(_wait_records(logs / "hp2", 4)) == 4
        staged = tmp_path / "v2"
        shutil.copytree(model_dir, staged)
        (staged / "assets.extra").mkdir()
        [log_file] = logs.glob("hp2.*.tfrecord")
        shutil.copy(log_file, staged / "assets.extra" / "tf_serving_warmup_requests")
        put_version(base, 2, staged)
        srv.wait_available(2, model="hp2")
        assert "replayed 4 warmup request(s) for hp2 version 2" in srv.log()
    finally:
        assert srv.stop() == 0


def test_log_files_rotate_by_size_and_the_oldest_go_past_the_cap(model_dir, tmp_path):
    base = tmp_path / "base"
    put_version(base, 1, model_dir)
    logs = tmp_path / "logs"
    config = _config(tmp_path, base, {"hp2": _logging(1.0, logs / "hp2")})
    srv = ServerProcess(f"--model_config_file={config}", "--request_log_max_file_bytes=600",
                        "--request_log_max_total_bytes=1500", log_dir=tmp_path)
    seen: set[str] = set()
    try:
        srv.wait_available(model="hp2")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(srv.grpc_target))
        for i in range(30):
            _predict(stub, "hp2", [float(i)])
            seen.update(p.name for p in logs.glob("hp2.*.tfrecord"))
        time.sleep(1)  # the writer catches up (30 small records)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            records = _read_logs(logs / "hp2")
            if records and tensors.from_proto(
                    records[-1].predict_log.request.inputs["x"])[0, 0] == 29.0:
                break
            time.sleep(0.1)
    finally:
        assert srv.stop() == 0
    files = sorted(logs.glob("hp2.*.tfrecord"))
    sizes = [f.stat().st_size for f in files]
    assert len(files) >= 2 and all(s <= 600 for s in sizes), sizes
    assert sum(sizes) <= 1500, sizes
    assert len(seen) > len(files)  # older files were removed
    xs = [float(tensors.from_proto(r.predict_log.request.inputs["x"])[0, 0])
          for r in _read_logs(logs / "hp2")]
    assert xs == list(range(30 - len(xs), 30))  # the newest records, in order


def test_a_full_writer_queue_drops_and_counts_never_waits(tmp_path):
    """With the writer not yet started, offers beyond the queue's size are dropped at
    once and counted in the metric; the queued ones are written once it runs."""
    from prometheus_client import CollectorRegistry, generate_latest
    from tensorflow_serving.config import model_server_config_pb2

    from tfdeploy.serving.request_log import RequestLog, sink_of

    mc = model_server_config_pb2.ModelConfig(name="m", base_path="/x")
    mc.logging_config.sampling_config.sampling_rate = 1.0
    mc.logging_config.log_collector_config.type = "file"
    mc.logging_config.log_collector_config.filename_prefix = str(tmp_path / "m")
    registry = CollectorRegistry()
    rlog = RequestLog(registry, max_file_bytes=1 << 20, max_total_bytes=1 << 20,
                      queue_size=2)
    rlog._sinks = {"m": sink_of(mc)}  # sinks without the writer thread: nothing drains

    class Version:
        name, version = "m", 1

    x = np.ones((1, 1), np.float32)
    started = time.monotonic()
    for _ in range(5):
        rlog.offer("predict", Version, "serving_default", ({"x": x}, {"y": x}, ()))
    assert time.monotonic() - started < 2
    text = generate_latest(registry).decode()
    assert ':tfdeploy:request_log:dropped_count_total{model_name="m"} 3.0' in text
    rlog.set_sinks({"m": sink_of(mc)})
    rlog.flush()
    rlog.close()
    assert len(_read_logs(tmp_path / "m")) == 2


@pytest.mark.parametrize("logging, message", [
    ('logging_config { log_collector_config { type: "kafka" filename_prefix: "/tmp/x" } }',
     "log_collector_config type 'kafka' is not supported"),
    ('logging_config { sampling_config { sampling_rate: 1.0 } '
     'log_collector_config { type: "file" filename_prefix: "relative" } }',
     "filename_prefix must be an absolute path"),
    ('logging_config { sampling_config { sampling_rate: 1.5 } '
     'log_collector_config { type: "file" filename_prefix: "/tmp/x" } }',
     "sampling_rate 1.5 is not in [0, 1]"),
    ('logging_config { sampling_config { sampling_rate: 1.0 per_task_sampling_configs { '
     'task_index: 1 sampling_rate: 0.5 } } '
     'log_collector_config { type: "file" filename_prefix: "/tmp/x" } }',
     "logging_config sampling_config.per_task_sampling_configs is not supported"),
])
def test_logging_configs_we_cannot_honour_stop_start_up(logging, message, model_dir,
                                                        tmp_path):
    import subprocess
    import sys

    from conftest import ROOT

    base = tmp_path / "base"
    put_version(base, 1, model_dir)
    config = _config(tmp_path, base, {"hp2": logging})
    proc = subprocess.run([sys.executable, "-m", "tfdeploy.serving", "--port=0",
                           f"--model_config_file={config}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr


def test_requests_lists_and_exports_a_deeplab_log_and_bench_replays_it(demo_base, tmp_path):
    """A real DeepLab export logs an encoded image (serving_default, gRPC) and a pixel
    array (predict_images, gRPC); ``tfdeploy requests --export`` writes both images and
    their masks (equal to what the server answered) and overlays; ``bench --from-log``
    replays the images."""
    import io
    import json

    from conftest import run_cli
    from PIL import Image

    from tfdeploy.export.warmup import encode_png, probe_image
    from tfdeploy.tfs.requests import encoded_image_request, images_request

    logs = tmp_path / "logs"
    config = _config(tmp_path, demo_base, {"deeplab": _logging(1.0, logs / "deeplab")})
    srv = ServerProcess(f"--model_config_file={config}", log_dir=tmp_path)
    try:
        srv.wait_available(model="deeplab")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(srv.grpc_target))
        image = probe_image(61, 83)
        png = encode_png(image)
        encoded = stub.Predict(encoded_image_request("deeplab", [png]), timeout=60)
        pixels = stub.Predict(images_request("deeplab", image), timeout=60)
        assert len(_wait_records(logs / "deeplab", 2)) == 2
        out = tmp_path / "sample"
        listed = json.loads(run_cli("requests", logs, "--export", out, "--json").stdout)
        bench = run_cli("bench", "--from-log", logs, "--server", srv.grpc_target, "-n", "2",
                        "-c", "1", "--warmup", "0", "--json")
    finally:
        assert srv.stop() == 0
    rows = listed["requests"]
    assert [(r["model"], r["version"], r["signature"], r["image_sizes"]) for r in rows] == [
        ("deeplab", 1, "serving_default", ["83x61"]),
        ("deeplab", 1, "predict_images", ["83x61"])]
    first, second = listed["exported"]
    assert Path(first["image"]).read_bytes() == png
    np.testing.assert_array_equal(np.asarray(Image.open(second["image"])), image)
    served = Image.open(io.BytesIO(
        tensors.from_proto(encoded.outputs["mask_png"]).ravel()[0]))
    np.testing.assert_array_equal(np.asarray(Image.open(first["mask"])), np.asarray(served))
    np.testing.assert_array_equal(
        np.asarray(Image.open(second["mask"])),
        tensors.from_proto(pixels.outputs["segmentation_map"])[0])
    for row in (first, second):
        assert Image.open(row["overlay"]).size == (83, 61)
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(
        Path(r["image"]).name for r in (first, second))
    levels = json.loads(bench.stdout)["levels"]
    assert levels and all(lv["errors"] == 0 and lv["requests"] == 2 for lv in levels), \
        bench.stdout


def test_requests_refuses_a_missing_or_foreign_path(tmp_path):
    from conftest import run_cli

    proc = run_cli("requests", tmp_path / "nope", check=False)
    assert proc.returncode != 0 and "no such file or directory" in proc.stderr
    (tmp_path / "x.tfrecord").write_bytes(b"not a tfrecord at all, no")
    proc = run_cli("requests", tmp_path, check=False)
    assert proc.returncode != 0 and "not a request log" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("runtime", ["native", "docker"])
def test_serve_says_the_official_binary_does_not_log_requests(runtime, model_dir,
                                                             tmp_path):
    from conftest import run_cli

    base = tmp_path / "base"
    put_version(base, 1, model_dir)
    config = _config(tmp_path, base, {"hp2": _logging(1.0, tmp_path / "logs" / "hp2")})
    proc = run_cli("serve", "--model-config-file", config, "--runtime", runtime,
                   check=False, timeout=120)
    assert proc.returncode != 0
    assert "does not log requests" in proc.stderr, proc.stderr


def test_bench_from_log_skips_class_names_requests_and_says_how_many(demo_base, tmp_path):
    """A client asks a labelled model for its class names once, lazily (``Client.names``):
    the log holds that ``class_names`` request beside the image, and ``bench --from-log``
    replays only the image, saying how many class_names requests it left out; a log of
    class_names requests alone has nothing to replay, and the error says why."""
    import json

    from conftest import export_json, run_cli

    from tfdeploy.client.predict import Client
    from tfdeploy.export.warmup import encode_png, probe_image

    labels = tmp_path / "classes.txt"
    labels.write_text("background\nsky\ngrass\nroad\nperson\n")
    base = tmp_path / "labelled"
    export_json("--output", str(base), "--labels", str(labels), "--no-verify",
                "--no-warmup")
    names_only, logs = tmp_path / "names-only", tmp_path / "logs"
    config = _config(tmp_path, base, {"deeplab": _logging(1.0, logs / "deeplab"),
                                      "names": _logging(1.0, names_only / "names")})
    srv = ServerProcess(f"--model_config_file={config}", log_dir=tmp_path)
    try:
        srv.wait_available(model="deeplab")
        srv.wait_available(model="names")
        client = Client(srv.grpc_target, model="deeplab")
        assert client.names()[1] == "sky"
        client.predict(encode_png(probe_image(61, 83)))
        assert Client(srv.grpc_target, model="names").names()[4] == "person"
        assert [r.model_spec.signature_name for r in
                (x.predict_log.request for x in _wait_records(logs / "deeplab", 2))] == [
            "class_names", "serving_default"]
        assert len(_wait_records(names_only / "names", 1)) == 1
        # the replays are logged too: bench a copy of what the client sent
        logs = Path(shutil.copytree(logs, tmp_path / "sent"))
        bench = run_cli("bench", "--from-log", logs, "--server", srv.grpc_target, "-n", "2",
                        "-c", "1", "--warmup", "0")
        as_json = json.loads(run_cli("bench", "--from-log", logs, "--server",
                                     srv.grpc_target, "-n", "2", "-c", "1", "--warmup",
                                     "0", "--json").stdout)
        alone = run_cli("bench", "--from-log", names_only, "--server", srv.grpc_target,
                        "--model", "names", "-n", "1", check=False)
    finally:
        assert srv.stop() == 0
    assert "skipped 1 logged class_names request " in bench.stderr, bench.stderr
    assert "(encoded image; 1 image, 83x61)" in bench.stdout, bench.stdout
    assert as_json["images"] == 1 and as_json["skipped_class_names"] == 1
    assert all(lv["errors"] == 0 and lv["requests"] == 2 for lv in as_json["levels"])
    assert alone.returncode == 2 and "Traceback" not in alone.stderr, alone.stderr
    assert "no logged Predict request has an image to replay (1 class_names request " \
           "left out)" in alone.stderr


def test_requests_by_name_finds_the_log_of_a_server_tfdeploy_stop_stopped(model_dir,
                                                                          tmp_path):
    """`tfdeploy stop` keeps the stopped server's record only so its request log is still
    found by name: `requests --name` lists it and `ui --name` browses it, `status` no
    longer shows the server, and the name can be served again (that server is then the
    one the name means)."""
    import json

    from conftest import run_cli
    from ui_browser import start_ui
    from ui_browser import stop as stop_ui

    base = tmp_path / "base"
    put_version(base, 1, model_dir)
    prefix = tmp_path / "logs" / "hp2"
    config = _config(tmp_path, base, {"hp2": _logging(1.0, prefix)})
    serve = ("serve", "--runtime", "embedded", "--name", "stopped-log", "--grpc-port", "0",
             "--rest-port", "0", "--model-config-file", config, "--timeout", "120", "--json")
    started = json.loads(run_cli(*serve).stdout)
    try:
        code, body = http("POST", f"http://{started['rest']}/v1/models/hp2:predict",
                          {"instances": [[4.0]]})
        assert code == 200, body
        assert len(_wait_records(prefix, 1)) == 1
    finally:
        run_cli("stop", "stopped-log")
    listed = json.loads(run_cli("requests", "--name", "stopped-log", "--json").stdout)
    assert [(r["model"], r["signature"]) for r in listed["requests"]] == [
        ("hp2", "serving_default")]
    ui, url = start_ui("--name", "stopped-log")  # browses the log; no server to ask
    try:
        code, info = http("GET", url + "api/info")
        assert code == 200 and info["request_logs"] == [str(prefix)], info
        code, listing = http("GET", url + "api/requests")
        assert code == 200 and listing["total"] == 1, listing
    finally:
        stop_ui(ui)
    assert "stopped-log" not in [s["name"] for s in
                                 json.loads(run_cli("status", "--json").stdout)]
    proc = run_cli("status", "stopped-log", check=False)
    assert proc.returncode != 0 and "no server named 'stopped-log'" in proc.stderr
    proc = run_cli("stop", "stopped-log", check=False)  # nothing of it runs
    assert proc.returncode != 0 and "no server named 'stopped-log'" in proc.stderr

    again = json.loads(run_cli(*serve).stdout)  # a stopped name is free
    try:
        [now] = json.loads(run_cli("status", "stopped-log", "--json").stdout)
        assert now["running"] and now["pid"] == again["pid"] != started["pid"]
        listed = json.loads(run_cli("requests", "--name", "stopped-log", "--json").stdout)
        assert len(listed["requests"]) == 1
    finally:
        run_cli("stop", "stopped-log")
