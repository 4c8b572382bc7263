"""The embedded model server over real sockets on 127.0.0.1: seed clients, REST, hot swap,
partial versions, malformed requests, batching, metrics, config files, SIGTERM drain."""

from __future__ import annotations

import base64
import io
import os
import shutil
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT, export_json
from PIL import Image
from servers import ServerProcess, http
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

EXAMPLES = sorted((ROOT / "examples").glob("*.jpg"))


def _image(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def in_process(demo_base):
    return tf.saved_model.load(str(demo_base / "1"))


@pytest.fixture(scope="module")
def server(demo_base, tmp_path_factory):
    monitoring = tmp_path_factory.mktemp("cfg") / "monitoring.config"
    monitoring.write_text('prometheus_config { enable: true, '
                          'path: "/monitoring/prometheus/metrics" }\n')
    srv = ServerProcess("--model_name=deeplab", f"--model_base_path={demo_base}",
                        f"--monitoring_config_file={monitoring}", "--max_request_bytes=4000000",
                        "--xla_cpu_compilation_enabled=true",
                        log_dir=tmp_path_factory.mktemp("logs"))
    srv.wait_available(1)
    yield srv
    assert srv.stop() == 0


def _seed_request(image: np.ndarray) -> predict_pb2.PredictRequest:
    """Exactly what the seed's notebook client builds."""
    h, w = image.shape[:2]
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "deeplab"
    request.model_spec.signature_name = "predict_images"
    request.inputs["images"].CopyFrom(
        tf.make_tensor_proto(image.astype(np.float32), shape=[1, h, w, 3]))
    request.inputs["height"].CopyFrom(tf.make_tensor_proto(h, shape=[1]))
    request.inputs["width"].CopyFrom(tf.make_tensor_proto(w, shape=[1]))
    return request


def _seed_mask(result) -> np.ndarray:
    out = result.outputs["segmentation_map"]
    seg = np.array(out.int64_val)
    return seg.reshape((out.tensor_shape.dim[1].size, out.tensor_shape.dim[2].size))


def _expected(in_process, image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    return in_process.signatures["predict_images"](
        images=tf.constant(image[None].astype(np.float32)), height=tf.constant(h),
        width=tf.constant(w))["segmentation_map"].numpy()[0]


def test_seed_client_sync_and_future(server, in_process):
    channel = grpc.insecure_channel(server.grpc_target)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    for path in EXAMPLES[:2]:
        image = _image(path)
        expected = _expected(in_process, image)
        assert len(np.unique(expected)) > 1  # a real mask, not all background
        result = stub.Predict(_seed_request(image), 60.0)
        np.testing.assert_array_equal(_seed_mask(result), expected)
        assert result.model_spec.version.value == 1
        future = stub.Predict.future(_seed_request(image), 60.0)
        np.testing.assert_array_equal(_seed_mask(future.result()), expected)


def test_encoded_signature_over_grpc(server, in_process):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(
        grpc.insecure_channel(server.grpc_target))
    image = _image(EXAMPLES[2])
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "deeplab"  # signature omitted: serving_default
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([_png(image)]))
    request.output_filter.append("mask_png")
    result = stub.Predict(request, 60.0)
    assert list(result.outputs) == ["mask_png"]
    png = Image.open(io.BytesIO(result.outputs["mask_png"].string_val[0]))
    np.testing.assert_array_equal(np.asarray(png), _expected(in_process, image))


def test_metadata_and_status(server):
    channel = grpc.insecure_channel(server.grpc_target)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "deeplab"
    request.metadata_field.append("signature_def")
    response = stub.GetModelMetadata(request, 10)
    sigs = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(sigs)
    assert set(sigs.signature_def) == {"predict_images", "serving_default", "class_names"}
    images = sigs.signature_def["predict_images"].inputs["images"]
    assert images.dtype == tf.float32.as_datatype_enum
    status_stub = model_service_pb2_grpc.ModelServiceStub(channel)
    req = get_model_status_pb2.GetModelStatusRequest()
    req.model_spec.name = "deeplab"
    resp = status_stub.GetModelStatus(req, 10)
    assert [(s.version, s.state) for s in resp.model_version_status] == [(1, 30)]
    assert "flag --xla_cpu_compilation_enabled is not implemented" in server.log()
    code, body = http("GET", f"{server.rest}/v1/models/deeplab/versions/1")
    assert code == 200 and body == {"model_version_status": [  # TF Serving's exact shape
        {"version": "1", "state": "AVAILABLE",
         "status": {"error_code": "OK", "error_message": ""}}]}
    code, body = http("GET", f"{server.rest}/v1/models/deeplab/metadata")
    assert code == 200
    assert set(body["metadata"]["signature_def"]["signature_def"]) == {
        "predict_images", "serving_default", "class_names"}


def test_rest_row_columnar_and_b64(server, in_process):
    image = _image(EXAMPLES[3])[:96, :128]
    h, w = image.shape[:2]
    expected = _expected(in_process, image)
    url = f"{server.rest}/v1/models/deeplab:predict"
    code, body = http("POST", url, {"signature_name": "predict_images", "instances": [
        {"images": image.tolist(), "height": h, "width": w}]})
    assert code == 200, body
    np.testing.assert_array_equal(np.array(body["predictions"][0]), expected)
    code, body = http("POST", url, {"signature_name": "predict_images", "inputs": {
        "images": [image.tolist()], "height": [h], "width": w}})
    assert code == 200, body
    np.testing.assert_array_equal(np.array(body["outputs"][0]), expected)
    b64 = {"b64": base64.b64encode(_png(image)).decode()}
    code, body = http("POST", url, {"instances": [b64, b64]})
    assert code == 200, body
    assert len(body["predictions"]) == 2
    first = body["predictions"][0]
    np.testing.assert_array_equal(np.array(first["segmentation_map"]), expected)
    png = Image.open(io.BytesIO(base64.b64decode(first["mask_png"]["b64"])))
    np.testing.assert_array_equal(np.asarray(png), expected)
    code, body = http("POST", f"{server.rest}/v1/models/deeplab/versions/1:predict",
                      {"inputs": {"image_bytes": [b64]}})
    assert code == 200 and np.array(body["outputs"]["segmentation_map"]).shape == (1, h, w)


@pytest.mark.parametrize("payload,code,needle", [
    ({"signature_name": "predict_images", "instances": [{"images": [[[1, 2, 3]]]}]},
     400, "Missing but required: {height,width}."),
    ({"signature_name": "predict_images", "inputs": {
        "images": [[[[1, 2, 3]]]], "height": 1, "width": 1, "depth": 3}},
     400, "input 'depth' is not in the signature"),
    ({"signature_name": "predict_images", "inputs": {
        "images": [[1, 2]], "height": 1, "width": 1}},  # the graph decides about shapes
     400, "Input to reshape is a tensor with 2 values, but the requested shape has 3"),
    ({"signature_name": "predict_images", "inputs": {
        "images": [[[["a", "b", "c"]]]], "height": 1, "width": 1}},
     400, "input 'images': JSON Value: \"a\" Type: String is not of expected type: float"),
    ({"inputs": {"image_bytes": [{"b64": base64.b64encode(b"not an image").decode()}]}},
     400, "Unknown image file format"),
    ({"signature_name": "nope", "instances": [1]}, 400, 'signature key "nope" not found'),
    ({"instances": [[1, 2], [3]]}, 400, ""),
    ({}, 400, "Missing 'inputs' or 'instances' key"),
])
def test_rest_malformed(server, payload, code, needle):
    status, body = http("POST", f"{server.rest}/v1/models/deeplab:predict", payload)
    assert status == code and needle in body["error"], body


def test_rest_malformed_transport(server):
    base = f"{server.rest}/v1/models"
    status, body = http("POST", f"{base}/deeplab:predict", b"{not json")
    assert status == 400 and "JSON" in body["error"]
    status, body = http("POST", f"{base}/nosuch:predict", {"instances": [1]})
    assert status == 404 and "nosuch" in body["error"]
    status, body = http("POST", f"{base}/deeplab/versions/9:predict", {"instances": [1]})
    assert status == 404 and "9" in body["error"]
    status, body = http("POST", f"{base}/deeplab/labels/stable:predict", {"instances": [1]})
    assert (status, body) == (400, {"error": "Unrecognized servable version label: stable"})
    status, body = http("POST", f"{base}/deeplab:predict", b"x" * 4_100_000)
    assert status == 413 and "exceeds the limit of 4000000 bytes" in body["error"]
    status, body = http("POST", f"{base}/deeplab:classify", {"examples": []})
    assert (status, body) == (400, {"error": "'examples' value is an empty array"})
    status, body = http("GET", f"{base}/deeplab/versions/3")
    assert status == 404
    # still serving
    assert server.status() == {1: "AVAILABLE"}


def test_grpc_malformed(server):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(
        grpc.insecure_channel(server.grpc_target))
    image = np.zeros((8, 8, 3), np.uint8)

    def call(mutate):
        request = _seed_request(image)
        mutate(request)
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(request, 30)
        return info.value.code(), info.value.details()

    code, msg = call(lambda r: r.inputs.pop("height"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "height" in msg
    code, msg = call(lambda r: r.inputs["images"].CopyFrom(
        tf.make_tensor_proto(np.zeros((1, 8, 8, 3), np.int32))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "expects dtype float" in msg
    code, msg = call(lambda r: setattr(r.model_spec, "name", "other"))
    assert code == grpc.StatusCode.NOT_FOUND
    code, msg = call(lambda r: r.model_spec.version.CopyFrom(
        type(r.model_spec.version)(value=42)))
    assert code == grpc.StatusCode.NOT_FOUND and "42" in msg
    code, msg = call(lambda r: setattr(r.model_spec, "signature_name", "missing"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert msg == 'Serving signature key "missing" not found.'
    code, msg = call(lambda r: r.inputs["height"].CopyFrom(tf.make_tensor_proto(99, shape=[1])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT  # reshape of 8x8 image to 99x8 fails
    with pytest.raises(grpc.RpcError) as info:
        from tensorflow_serving.apis import classification_pb2

        request = classification_pb2.ClassificationRequest()
        request.model_spec.name = "deeplab"
        request.model_spec.signature_name = "predict_images"
        stub.Classify(request, 10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # not a classify signature
    assert info.value.details() == "Expected one input Tensor."
    assert server.status() == {1: "AVAILABLE"}


def test_metrics(server):
    code, text = http("GET", f"{server.rest}/monitoring/prometheus/metrics")
    assert code == 200
    assert ':tensorflow:serving:request_count_total{api="grpc",model_name="deeplab",' \
           'model_version="1",signature_name="predict_images",status="OK"}' in text
    assert ':tensorflow:serving:request_error_count_total{api="rest"' in text
    # requests rejected before reaching the model (bad JSON) are counted too
    assert 'status="INVALID_ARGUMENT"' in text and 'model_version=""' in text
    assert ":tensorflow:serving:request_latency_bucket" in text


def test_hot_swap_without_failures(demo_base, tmp_path):
    base = tmp_path / "deeplab"
    shutil.copytree(demo_base / "1", base / "1")
    srv = ServerProcess("--model_name=deeplab", f"--model_base_path={base}",
                        "--file_system_poll_wait_seconds=0.5", log_dir=tmp_path)
    try:
        srv.wait_available(1)
        image = _image(EXAMPLES[0])[:64, :64]
        stop, failures, versions_seen = threading.Event(), [], []
        stub = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(srv.grpc_target))

        def client():
            sent = 0
            while not stop.is_set() and sent < 2000:
                try:
                    versions_seen.append(stub.Predict(_seed_request(image), 30)
                                         .model_spec.version.value)
                except grpc.RpcError as exc:
                    failures.append(exc.details())
                sent += 1

        with futures.ThreadPoolExecutor(8) as pool:
            workers = [pool.submit(client) for _ in range(8)]
            time.sleep(1.0)
            assert export_json("--output", str(base))["version"] == 2
            srv.wait_for(lambda s: s == {2: "AVAILABLE", 1: "END"}, timeout=120)
            time.sleep(1.0)
            stop.set()
            for w in workers:
                w.result()
        assert failures == []
        assert 1 in versions_seen and 2 in versions_seen
        assert versions_seen[-1] == 2
    finally:
        assert srv.stop() == 0


def test_partial_versions_are_never_loaded(demo_base, tmp_path):
    base = tmp_path / "deeplab"
    shutil.copytree(demo_base / "1", base / "1")
    # 2: being written by someone else (variables index not there yet)
    shutil.copytree(demo_base / "1", base / "2")
    (base / "2" / "variables" / "variables.index").unlink()
    # 3: only variables so far; 4: a file, not a directory; "5.tmp": not numeric
    shutil.copytree(demo_base / "1" / "variables", base / "3" / "variables")
    (base / "4").write_text("not a version")
    shutil.copytree(demo_base / "1", base / "5.tmp")
    srv = ServerProcess("--model_name=deeplab", f"--model_base_path={base}",
                        "--file_system_poll_wait_seconds=0.2", log_dir=tmp_path)
    try:
        srv.wait_available(1)
        time.sleep(2.0)  # ten polls
        assert srv.status() == {1: "AVAILABLE"}
        # completing version 2 makes it load, and it replaces 1 (latest 1 policy)
        shutil.copy(demo_base / "1" / "variables" / "variables.index",
                    base / "2" / "variables" / "variables.index")
        srv.wait_for(lambda s: s == {2: "AVAILABLE", 1: "END"})
    finally:
        assert srv.stop() == 0


def test_model_config_file_policies_labels_and_reload(demo_base, tmp_path):
    base = tmp_path / "deeplab"
    for v in (1, 2, 3):
        shutil.copytree(demo_base / "1", base / str(v))
    config = tmp_path / "models.config"
    config.write_text(f"""model_config_list {{
  config {{ name: "deeplab" base_path: "{base}" model_platform: "tensorflow"
           model_version_policy {{ specific {{ versions: 1 versions: 3 }} }}
           version_labels {{ key: "stable" value: 1 }}
           version_labels {{ key: "canary" value: 3 }} }}
  config {{ name: "other" base_path: "{base}"
           model_version_policy {{ latest {{ num_versions: 2 }} }} }}
}}
""")
    srv = ServerProcess(f"--model_config_file={config}",
                        "--model_config_file_poll_wait_seconds=0.5",
                        "--allow_version_labels_for_unavailable_models", log_dir=tmp_path)
    try:
        srv.wait_for(lambda s: s == {1: "AVAILABLE", 3: "AVAILABLE"})
        srv.wait_for(lambda s: s == {2: "AVAILABLE", 3: "AVAILABLE"}, model="other")
        b64 = {"b64": base64.b64encode(_png(np.zeros((16, 16, 3), np.uint8))).decode()}
        for label, version in (("stable", 1), ("canary", 3)):
            # status by label lists every version, as tensorflow_model_server's does
            code, body = http("GET", f"{srv.rest}/v1/models/deeplab/labels/{label}")
            assert code == 200 and [v["version"] for v in body["model_version_status"]] == [
                "3", "1"]
            # metadata resolves the label
            code, body = http("GET", f"{srv.rest}/v1/models/deeplab/labels/{label}/metadata")
            assert code == 200 and body["model_spec"]["version"] == str(version)
            code, _ = http("POST", f"{srv.rest}/v1/models/deeplab/labels/{label}:predict",
                           {"instances": [b64]})
            assert code == 200
        stub = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(srv.grpc_target))
        request = _seed_request(np.zeros((8, 8, 3), np.uint8))
        request.model_spec.version_label = "canary"
        assert stub.Predict(request, 30).model_spec.version.value == 3
        # reload: drop "other", serve all versions of deeplab
        from tensorflow_serving.config import model_server_config_pb2

        new = model_server_config_pb2.ModelServerConfig()
        mc = new.model_config_list.config.add(name="deeplab", base_path=str(base))
        mc.model_version_policy.all.SetInParent()
        reload = model_management_pb2.ReloadConfigRequest(config=new)
        resp = model_service_pb2_grpc.ModelServiceStub(
            grpc.insecure_channel(srv.grpc_target)).HandleReloadConfigRequest(reload, 120)
        assert resp.status.error_code == 0, resp.status.error_message
        # as tensorflow_model_server, the reload waits for models it adds, not for new
        # versions of models it keeps: version 2 comes up on the loader thread
        srv.wait_for(lambda s: s == {1: "AVAILABLE", 2: "AVAILABLE", 3: "AVAILABLE"})
        assert srv.status("other") == {}
        # editing the file is picked up by polling: back to one model, latest version only
        config.write_text(f'model_config_list {{ config {{ name: "deeplab" '
                          f'base_path: "{base}" }} }}\n')
        srv.wait_for(lambda s: s == {3: "AVAILABLE", 2: "END", 1: "END"})
        assert "model config file changed" in srv.log()
    finally:
        assert srv.stop() == 0


def test_batching_merges_and_returns_each_its_own(demo_base, tmp_path, in_process):
    params = tmp_path / "batching.config"
    params.write_text("max_batch_size { value: 8 }\nbatch_timeout_micros { value: 300000 }\n"
                      "num_batch_threads { value: 1 }\nmax_enqueued_batches { value: 10 }\n")
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text('prometheus_config { enable: true path: "/metrics" }')
    srv = ServerProcess("--model_name=deeplab", f"--model_base_path={demo_base}",
                        "--enable_batching", f"--batching_parameters_file={params}",
                        f"--monitoring_config_file={monitoring}", log_dir=tmp_path)
    try:
        srv.wait_available(1)
        crops = [_image(p)[:80, :96] for p in EXAMPLES] * 2
        stub = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(srv.grpc_target))

        def call(image):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "deeplab"
            request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([_png(image)]))
            out = stub.Predict(request, 60).outputs["segmentation_map"]
            return tf.make_ndarray(out)[0]

        barrier = threading.Barrier(len(crops))

        def together(image):
            barrier.wait()
            return call(image)

        with futures.ThreadPoolExecutor(len(crops)) as pool:
            masks = list(pool.map(together, crops))
        for image, mask in zip(crops, masks, strict=True):
            np.testing.assert_array_equal(mask, _expected(in_process, image))
        # a request that cannot merge (another size) still gets its own answer
        odd = _image(EXAMPLES[0])[:50, :70]
        np.testing.assert_array_equal(call(odd), _expected(in_process, odd))
        _, text = http("GET", f"{srv.rest}/metrics")
        merged = [line for line in text.splitlines()
                  if line.startswith(":tensorflow:serving:batching_session:"
                                     "merged_request_count_total")]
        assert merged and float(merged[0].split()[-1]) >= 2, text
    finally:
        assert srv.stop() == 0


def _cpu_seconds(pid: int) -> float:
    """CPU time process ``pid`` has used (user + system)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_sigterm_drains_in_flight_requests(demo_base, tmp_path):
    """A request the server is running when SIGTERM comes is answered before it exits.
    SIGTERM goes once the server is busy with it (its CPU time grows), not after a fixed
    pause: on a loaded machine the request had not arrived 0.3 s after it was sent."""
    srv = ServerProcess("--model_name=deeplab", f"--model_base_path={demo_base}",
                        log_dir=tmp_path)
    srv.wait_available(1)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(
        grpc.insecure_channel(srv.grpc_target))
    small = _image(EXAMPLES[0])
    stub.Predict(_seed_request(small), 120)  # connected, and the model warm
    big = np.tile(small, (4, 4, 1))  # 960x1280: a request that takes a while
    idle = _cpu_seconds(srv.proc.pid)
    future = stub.Predict.future(_seed_request(big), 120)
    deadline = time.monotonic() + 60
    while _cpu_seconds(srv.proc.pid) - idle < 0.3 and not future.done():
        assert time.monotonic() < deadline, "the server never started on the request"
        time.sleep(0.02)
    assert not future.done(), "answered before SIGTERM: nothing was in flight"
    assert srv.stop() == 0
    assert _seed_mask(future.result()).shape == big.shape[:2]
    assert "draining" in srv.log()


def test_flags(tmp_path):
    import subprocess
    import sys

    run = [sys.executable, "-m", "tfdeploy.serving"]
    proc = subprocess.run([*run, "--bogus_flag=1"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "--bogus_flag=1" in proc.stderr
    proc = subprocess.run([*run, "--port=x"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "--port" in proc.stderr
    proc = subprocess.run([*run, "--help"], capture_output=True, text=True, cwd=ROOT)
    assert "--model_base_path" in proc.stdout and "--rest_api_port" in proc.stdout
    proc = subprocess.run([*run, "--port=0"], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 2 and "--model_base_path or --model_config_file" in proc.stderr


def test_seed_tf1_savedmodel_is_served_unchanged(tmp_path):
    """Version directories users already have from the seed's TF1 exporter."""
    import slim_reference

    base = tmp_path / "versions"
    slim_reference.write_seed_savedmodel(base / "1")
    srv = ServerProcess("--model_name=deeplab", f"--model_base_path={base}", log_dir=tmp_path)
    try:
        srv.wait_available(1)
        image = np.random.default_rng(3).integers(0, 255, (37, 21, 3)).astype(np.uint8)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(srv.grpc_target))
        expected = np.argmax(image.astype(np.float32) * slim_reference.SEED_TOY_SCALE, axis=2)
        np.testing.assert_array_equal(_seed_mask(stub.Predict(_seed_request(image), 30)),
                                      expected)
        request = _seed_request(image)  # scalars instead of shape [1]
        request.inputs["height"].CopyFrom(tf.make_tensor_proto(37))
        request.inputs["width"].CopyFrom(tf.make_tensor_proto(21))
        np.testing.assert_array_equal(_seed_mask(stub.Predict(request, 30)), expected)
        code, body = http("POST", f"{srv.rest}/v1/models/deeplab:predict", {
            "signature_name": "predict_images",
            "inputs": {"images": [image.tolist()], "height": 37, "width": 21}})
        assert code == 200, body
        np.testing.assert_array_equal(np.array(body["outputs"][0]), expected)
    finally:
        assert srv.stop() == 0


def test_failed_load_is_retried(demo_base, tmp_path):
    """A version that fails to load (here: written incompletely by another tool, then
    repaired in place) is loaded on a later retry, as tensorflow_model_server does; at
    start-up the server waits for that (nothing listens meanwhile), as the official one
    does."""
    import time

    base = tmp_path / "deeplab"
    shutil.copytree(demo_base / "1", base / "1")
    good = (base / "1" / "saved_model.pb").read_bytes()
    (base / "1" / "saved_model.pb").write_bytes(b"not a SavedModel yet")
    srv = ServerProcess("--model_name=deeplab", f"--model_base_path={base}",
                        "--file_system_poll_wait_seconds=0.2",
                        "--load_retry_interval_micros=500000", "--max_num_load_retries=50",
                        log_dir=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while "will retry in 0.5s" not in srv.log():
            assert srv.proc.poll() is None and time.monotonic() < deadline, srv.log()
            time.sleep(0.2)
        assert "failed to load deeplab version 1" in srv.log()
        assert "Running gRPC ModelServer" not in srv.log()
        (base / "1" / "saved_model.pb").write_bytes(good)
        srv.wait_for(lambda s: s == {1: "AVAILABLE"}, timeout=120)
    finally:
        assert srv.stop() == 0


def test_a_signal_once_a_port_accepts_drains_instead_of_exiting(demo_base, tmp_path):
    """SIGINT the moment the REST port accepts (start() may still be opening things):
    the server drains and says so, not 'stopped before the models loaded' with a client
    possibly in flight.  Before the fix every try here took the early exit."""
    import signal
    import socket

    for _ in range(2):
        srv = ServerProcess("--model_name=deeplab", f"--model_base_path={demo_base}",
                            log_dir=tmp_path)
        deadline = time.monotonic() + 120
        while True:
            assert srv.proc.poll() is None, srv.log()
            assert time.monotonic() < deadline, "the REST port never accepted"
            try:
                socket.create_connection(("127.0.0.1", srv.rest_port), timeout=0.05).close()
                break
            except OSError:
                time.sleep(0.001)
        srv.proc.send_signal(signal.SIGINT)
        assert srv.proc.wait(60) == 0
        log = srv.log()
        assert "draining" in log and "before the models loaded" not in log, log
