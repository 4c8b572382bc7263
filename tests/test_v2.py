"""The Open Inference Protocol (KServe v2) on the embedded server: REST and gRPC, JSON and
binary tensors, health checking, error cases, checked against the v1 answers of the same
server.  Clients no one here wrote (tritonclient, KServe's) run in .venv-kserve (they pin
protobuf < 7) through tests/v2_clients.py."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from servers import ServerProcess, http
from small_models import half_plus_two, put_version, save_half_plus_two

from tfdeploy.tfs import v2

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "tfdeploy" / "demo" / "images").glob("*.jpg"))
CLIENTS_PY = ROOT / ".venv-kserve" / "bin" / "python"
CLIENTS_READY = ROOT / ".venv-kserve" / ".installed-v2"  # `make test` writes it


@pytest.fixture(scope="module")
def server(demo_base, tmp_path_factory):
    """One server with the demo DeepLab export and a numeric model (half_plus_two)."""
    tmp = tmp_path_factory.mktemp("v2")
    hpt = tmp / "hpt"
    hpt.mkdir()
    put_version(hpt, 1, save_half_plus_two(tmp / "hpt_src"))
    config = tmp / "models.config"
    config.write_text(
        "model_config_list {\n"
        f'  config {{ name: "deeplab" base_path: "{demo_base}" model_platform: "tensorflow" }}\n'
        f'  config {{ name: "hpt" base_path: "{hpt}" model_platform: "tensorflow" }}\n'
        "}\n")
    srv = ServerProcess(f"--model_config_file={config}", log_dir=tmp)
    srv.wait_available(1)
    srv.wait_available(1, model="hpt")
    yield srv
    srv.stop()


def post(url: str, body: bytes, headers: dict | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, data=body, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def v1_predict(server, model: str, body: dict) -> dict:
    code, out = http("POST", f"{server.rest}/v1/models/{model}:predict", body)
    assert code == 200, out
    return out


def digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def v1_masks(server) -> dict[str, dict]:
    """The v1 answers for the demo images: segmentation_map's shape, dtype and digest."""
    out = {}
    for path in EXAMPLES:
        body = {"inputs": {"image_bytes": [{"b64": base64.b64encode(path.read_bytes())
                                                   .decode()}]}}
        outputs = v1_predict(server, "deeplab", body)["outputs"]
        array = np.asarray(outputs["segmentation_map"], dtype=np.uint8)
        out[path.name] = {"shape": list(array.shape), "sha256": digest(array)}
    return out


# -- REST ----------------------------------------------------------------------------------
def test_health_metadata_and_ready(server):
    assert http("GET", f"{server.rest}/v2/health/live") == (200, {"live": True})
    assert http("GET", f"{server.rest}/v2/health/ready") == (200, {"ready": True})
    code, meta = http("GET", f"{server.rest}/v2")
    assert code == 200 and meta["name"] == "tfdeploy-model-server"
    assert "binary_tensor_data" in meta["extensions"]
    code, meta = http("GET", f"{server.rest}/v2/models/hpt")
    assert code == 200
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 1]}]
    assert meta["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}]
    assert meta["versions"] == ["1"] and meta["platform"] == "tensorflow_savedmodel"
    code, meta = http("GET", f"{server.rest}/v2/models/deeplab/versions/1")
    assert code == 200 and meta["inputs"][0] == {"name": "image_bytes", "datatype": "BYTES",
                                                 "shape": [-1]}
    assert "predict_images" in meta["parameters"]["signatures"]
    assert http("GET", f"{server.rest}/v2/models/hpt/ready")[0] == 200
    assert http("GET", f"{server.rest}/v2/models/hpt/versions/1/ready")[0] == 200
    assert http("GET", f"{server.rest}/v2/models/hpt/versions/7/ready")[0] == 404


def test_json_infer_matches_v1(server):
    x = [[1.0], [2.5], [-4.0]]
    v1 = v1_predict(server, "hpt", {"instances": x})["predictions"]
    code, out = http("POST", f"{server.rest}/v2/models/hpt/infer",
                     {"id": "r1", "inputs": [{"name": "x", "datatype": "FP32", "shape": [3, 1],
                                              "data": [1.0, 2.5, -4.0]}]})
    assert code == 200, out
    assert out["model_name"] == "hpt" and out["model_version"] == "1" and out["id"] == "r1"
    assert out["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [3, 1],
                               "data": [v[0] for v in v1]}]
    # nested data is the same tensor
    code, nested = http("POST", f"{server.rest}/v2/models/hpt/infer",
                        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [3, 1],
                                     "data": x}]})
    assert code == 200 and nested["outputs"] == out["outputs"]


def binary_request(header: dict, *blobs: bytes) -> tuple[bytes, dict]:
    head = json.dumps(header).encode()
    return head + b"".join(blobs), {"Inference-Header-Content-Length": str(len(head)),
                                   "Content-Type": "application/octet-stream"}


def test_binary_tensors_of_the_demo_images_match_v1(server):
    expected = v1_masks(server)
    for path in EXAMPLES:
        raw = path.read_bytes()
        blob = len(raw).to_bytes(4, "little") + raw
        body, headers = binary_request(
            {"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1],
                         "parameters": {"binary_data_size": len(blob)}}],
             "outputs": [{"name": "segmentation_map", "parameters": {"binary_data": True}}]},
            blob)
        code, got_headers, reply = post(f"{server.rest}/v2/models/deeplab/infer", body,
                                        headers)
        assert code == 200, reply
        length = int({k.lower(): v for k, v in got_headers.items()}[v2.HEADER_LENGTH])
        head = json.loads(reply[:length])
        (tensor,) = head["outputs"]
        assert tensor["name"] == "segmentation_map" and tensor["datatype"] == "UINT8"
        assert tensor["parameters"]["binary_data_size"] == len(reply) - length
        array = np.frombuffer(reply[length:], np.uint8).reshape(tensor["shape"])
        assert {"shape": tensor["shape"], "sha256": digest(array)} == expected[path.name]


def test_signature_parameter_picks_another_signature(server):
    code, out = http("POST", f"{server.rest}/v2/models/deeplab/infer",
                     {"parameters": {"signature_name": "nope"},
                      "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]})
    assert code == 400 and "nope" in out["error"]


@pytest.mark.parametrize("case", ["unknown model", "wrong datatype", "bad shape",
                                  "truncated binary", "unknown input", "not json"])
def test_rest_errors(server, case):
    url = f"{server.rest}/v2/models/hpt/infer"
    good = {"name": "x", "datatype": "FP32", "shape": [2, 1], "data": [1, 2]}
    headers: dict = {}
    if case == "unknown model":
        url = f"{server.rest}/v2/models/nope/infer"
        body = json.dumps({"inputs": [good]}).encode()
    elif case == "wrong datatype":
        body = json.dumps({"inputs": [{**good, "datatype": "INT64"}]}).encode()
    elif case == "bad shape":
        body = json.dumps({"inputs": [{**good, "shape": [3, 1]}]}).encode()
    elif case == "unknown input":
        body = json.dumps({"inputs": [{**good, "name": "z"}]}).encode()
    elif case == "not json":
        body = b"{"
    else:
        body, headers = binary_request(
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 1],
                         "parameters": {"binary_data_size": 8}}]},
            np.array([1, 2], np.float32).tobytes()[:6])
    code, _, reply = post(url, body, headers)
    assert code == (404 if case == "unknown model" else 400), reply
    assert isinstance(json.loads(reply)["error"], str)


def test_server_ready_waits_for_every_model(tmp_path):
    """/v2/health/ready (model-free, for Kubernetes probes) is not ready while a model of
    the config has no version that serves; live is."""
    empty = tmp_path / "empty"
    empty.mkdir()
    srv = ServerProcess("--model_name=later", f"--model_base_path={empty}", log_dir=tmp_path)
    try:
        srv.wait_for(lambda s: True, model="later")
        assert http("GET", f"{srv.rest}/v2/health/live")[0] == 200
        assert http("GET", f"{srv.rest}/v2/health/ready")[0] == 503
        assert http("GET", f"{srv.rest}/v2/models/later/ready")[0] == 404
    finally:
        srv.stop()


# -- gRPC ----------------------------------------------------------------------------------
def grpc_call(server, rpc: str, request):
    messages = v2.grpc_messages()
    _, response = v2.RPCS[rpc]
    with grpc.insecure_channel(server.grpc_target) as channel:
        return channel.unary_unary(
            f"/{v2.PACKAGE}.{v2.SERVICE}/{rpc}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=messages[response].FromString)(request, timeout=120)


def test_grpc_infer_matches_v1_and_errors(server):
    m = v2.grpc_messages()
    assert grpc_call(server, "ServerLive", m["ServerLiveRequest"]()).live
    assert grpc_call(server, "ServerReady", m["ServerReadyRequest"]()).ready
    assert grpc_call(server, "ModelReady", m["ModelReadyRequest"](name="hpt")).ready
    meta = grpc_call(server, "ModelMetadata", m["ModelMetadataRequest"](name="hpt"))
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("x", "FP32", [-1, 1])]
    x = np.array([[3.0], [5.0]], np.float32)
    request = m["ModelInferRequest"](model_name="hpt", id="g1")
    request.inputs.add(name="x", datatype="FP32", shape=[2, 1])
    request.raw_input_contents.append(x.tobytes())
    out = grpc_call(server, "ModelInfer", request)
    assert out.model_version == "1" and out.id == "g1"
    y = np.frombuffer(out.raw_output_contents[0], np.float32).reshape(tuple(out.outputs[0].shape))
    np.testing.assert_array_equal(y, half_plus_two(x))
    # typed contents
    request = m["ModelInferRequest"](model_name="hpt")
    request.inputs.add(name="x", datatype="FP32", shape=[2, 1]).contents.fp32_contents.extend(
        [3.0, 5.0])
    out = grpc_call(server, "ModelInfer", request)
    np.testing.assert_array_equal(np.frombuffer(out.raw_output_contents[0], np.float32),
                                  half_plus_two(x).ravel())
    for model, datatype, shape, raw, code in [
            ("nope", "FP32", [2, 1], x.tobytes(), grpc.StatusCode.NOT_FOUND),
            ("hpt", "INT32", [2, 1], x.tobytes(), grpc.StatusCode.INVALID_ARGUMENT),
            ("hpt", "FP32", [3, 1], x.tobytes(), grpc.StatusCode.INVALID_ARGUMENT),
            ("hpt", "FP32", [2, 1], x.tobytes()[:5], grpc.StatusCode.INVALID_ARGUMENT)]:
        request = m["ModelInferRequest"](model_name=model)
        request.inputs.add(name="x", datatype=datatype, shape=shape)
        request.raw_input_contents.append(raw)
        with pytest.raises(grpc.RpcError) as info:
            grpc_call(server, "ModelInfer", request)
        assert info.value.code() == code, (model, datatype, shape)


def test_grpc_health_checking(server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    serving = health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        # "ModelService" and "PredictionService": as tensorflow_model_server marks them
        for service in ("", "hpt", "deeplab", "ModelService", "PredictionService"):
            assert stub.Check(health_pb2.HealthCheckRequest(service=service),
                              timeout=10).status == serving
        with pytest.raises(grpc.RpcError) as info:
            stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=10)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_grpc_health_checking_can_be_turned_off(tmp_path):
    """--enable_grpc_healthcheck_service=false (tensorflow_model_server's default): no
    Health service, so a probe gets UNIMPLEMENTED as from the official server."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    model = tmp_path / "hpt"
    model.mkdir()
    put_version(model, 1, save_half_plus_two(tmp_path / "hpt_src"))
    srv = ServerProcess("--model_name=hpt", f"--model_base_path={model}",
                        "--enable_grpc_healthcheck_service=false", log_dir=tmp_path)
    try:
        srv.wait_available(1, model="hpt")
        with grpc.insecure_channel(srv.grpc_target) as channel:
            with pytest.raises(grpc.RpcError) as info:
                health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        srv.stop()


def test_grpc_health_watch_streams_each_change(tmp_path):
    """Watch (grpc-health-checking's own stubs): the status at once, then each change --
    a model that becomes available, one that is unloaded -- SERVICE_UNKNOWN for a name
    that is no model (the stream stays open); a cancelled stream frees its place; the
    streams end when the server stops."""
    import shutil

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    status = health_pb2.HealthCheckResponse
    base = tmp_path / "later"
    base.mkdir()
    src = save_half_plus_two(tmp_path / "hpt_src")
    srv = ServerProcess("--model_name=later", f"--model_base_path={base}",
                        "--file_system_poll_wait_seconds=0.2", log_dir=tmp_path)
    try:
        srv.wait_for(lambda s: True, model="later")
        with grpc.insecure_channel(srv.grpc_target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)

            def watch(service: str):
                return stub.Watch(health_pb2.HealthCheckRequest(service=service), timeout=120)

            model, server, unknown = watch("later"), watch(""), watch("nope")
            assert next(model).status == status.NOT_SERVING
            assert next(server).status == status.NOT_SERVING
            assert next(unknown).status == status.SERVICE_UNKNOWN
            put_version(base, 1, src)
            assert next(model).status == status.SERVING
            assert next(server).status == status.SERVING
            shutil.rmtree(base / "1")  # the version leaves: unloaded
            assert next(model).status == status.NOT_SERVING
            unknown.cancel()
            # a cancelled stream gives its place back: more watches than the server holds
            # at once, one after another, each answered
            for _ in range(12):
                extra = watch("later")
                assert next(extra).status == status.NOT_SERVING
                extra.cancel()
            put_version(base, 2, src)
            assert next(model).status == status.SERVING
            assert srv.stop() == 0
            # the stream ends (OK) once the server stops, after a last NOT_SERVING
            assert [r.status for r in model] == [status.NOT_SERVING]
    finally:
        srv.stop()


# -- clients no one here wrote ---------------------------------------------------------------
@pytest.mark.skipif(not CLIENTS_READY.exists(),
                    reason=".venv-kserve (tritonclient, kserve) missing: `make test` creates it")
@pytest.mark.parametrize("client", ["triton-http", "triton-grpc", "kserve-rest",
                                    "kserve-grpc"])
def test_outside_clients_match_v1(server, client):
    expected_masks = v1_masks(server)
    x = [[1.0], [2.5], [-4.0]]
    expected_y = [v[0] for v in v1_predict(server, "hpt", {"instances": x})["predictions"]]
    proc = subprocess.run(
        [str(CLIENTS_PY), str(ROOT / "tests" / "v2_clients.py"), client,
         f"127.0.0.1:{server.rest_port}", server.grpc_target, *map(str, EXAMPLES)],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["ready"] is True
    assert report["y"] == pytest.approx(expected_y)
    assert report["masks"] == expected_masks
    assert report["errors"]["unknown model"] and report["errors"]["wrong datatype"]


# -- tfdeploy's own client -------------------------------------------------------------------
@pytest.mark.parametrize("transport", ["grpc", "rest"])
@pytest.mark.parametrize("signature", ["serving_default", "predict_images"])
def test_predict_protocol_v2_writes_the_v1_masks(server, tmp_path, signature, transport):
    """--protocol v2 over either transport (--transport picks, as for v1) writes the
    masks v1 writes; over gRPC the metadata lists the default signature only, and
    predict_images is sent as asked."""
    from conftest import run_cli

    port = server.grpc_port if transport == "grpc" else server.rest_port
    masks = {}
    for protocol in ("v1", "v2"):
        out = tmp_path / protocol
        proc = run_cli("predict", *map(str, EXAMPLES[:2]), "--server", f"127.0.0.1:{port}",
                       "--transport", transport, "--protocol", protocol, "--signature",
                       signature, "-o", str(out), "--json")
        summary = json.loads(proc.stdout)["summary"]
        assert summary["ok"] == 2
        assert (summary["protocol"], summary["transport"]) == (protocol, transport)
        masks[protocol] = {p.name: p.read_bytes() for p in sorted(out.glob("*.png"))}
    assert len(masks["v2"]) == 2 and masks["v2"] == masks["v1"]


def test_client_protocol_v2_over_grpc(server):
    """The v2 gRPC transport: status and metadata from ModelMetadata, numeric tensors
    through raw contents, the server's status codes as ClientErrors."""
    import tfdeploy
    from tfdeploy.client.base import ClientError

    with tfdeploy.Client(server.grpc_target, "grpc", model="hpt", protocol="v2",
                         retries=0) as client:
        assert client.status() == {1: "AVAILABLE"}
        (sig,) = client.metadata().values()
        assert sig.inputs == {"x": ("float", [None, 1])}
        x = np.array([[1.0], [2.5]], np.float32)
        out = client.transport.predict("hpt", "serving_default", {"x": x})
        np.testing.assert_array_equal(out["y"], half_plus_two(x))
        for model, signature, code in (("nope", "serving_default", "NOT_FOUND"),
                                       ("hpt", "nope", "FAILED_PRECONDITION")):
            with pytest.raises(ClientError) as info:
                client.transport.predict(model, signature, {"x": x})
            assert info.value.code == code and "Traceback" not in info.value.message
        with pytest.raises(ClientError) as info:
            client.transport.status("hpt", "stable")  # a label: the protocol has none
        assert info.value.code == "INVALID_ARGUMENT" and "labels" in info.value.message


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_bench_protocol_v2(server, transport):
    """bench --protocol v2 measures v2 calls and says so (JSON and table); the protocol
    reaches the client (a version label, which v2 lacks, is refused as v2 refuses it)."""
    from conftest import run_cli

    port = server.grpc_port if transport == "grpc" else server.rest_port
    args = ["bench", str(EXAMPLES[0]), "--server", f"127.0.0.1:{port}", "--transport",
            transport, "-c", "1", "-n", "2", "--protocol", "v2"]
    doc = json.loads(run_cli(*args, "--json").stdout)
    assert (doc["protocol"], doc["transport"]) == ("v2", transport)
    assert [level["errors"] for level in doc["levels"]] == [0]
    proc = run_cli(*args)
    assert f"over {transport} (protocol v2)" in proc.stdout + proc.stderr
    proc = run_cli(*args, "--label", "stable", check=False)
    assert proc.returncode != 0 and "no version labels" in proc.stderr, proc.stderr


def test_predict_protocol_v2_at_the_wrong_port_says_so(server):
    from conftest import run_cli

    proc = run_cli("predict", str(EXAMPLES[0]), "--server", f"127.0.0.1:{server.rest_port}",
                   "--protocol", "v2", "--retries", "0", check=False)
    assert proc.returncode != 0, proc.stderr
    assert "use --transport rest, or the server's grpc port" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


# -- manifests -------------------------------------------------------------------------------
V2_IMAGE = "registry.example.com/tfdeploy/serving-embedded:1"


@pytest.mark.skipif(not (ROOT / ".venv-kserve" / ".installed").exists(),
                    reason="KServe SDK venv (.venv-kserve) missing: `make test` creates it")
@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_kserve_v2_inference_service(tmp_path, transport):
    """--protocol v2: a predictor container running tfdeploy-model-server on the model
    KServe downloads, probed on the model-free /v2/health URLs; KServe's SDK reads it back
    with every field kept."""
    from conftest import run_cli
    from test_manifest import KSERVE_CHECK

    out = json.loads(run_cli("manifest", "-t", "kserve", "s3://bucket/deeplab", "--protocol",
                             "v2", "--transport", transport, "--image", V2_IMAGE,
                             "-o", tmp_path, "--json").stdout)
    check = KSERVE_CHECK.split("    p = isvc.spec.predictor")[0] + (
        "    (c,) = isvc.spec.predictor.containers\n"
        "    print(json.dumps({'image': c.image, 'command': c.command, 'args': c.args,\n"
        "        'env': {e.name: e.value for e in c.env},\n"
        "        'ports': [p.container_port for p in c.ports],\n"
        "        'ready': c.readiness_probe.http_get.path,\n"
        "        'live': c.liveness_probe.http_get.path,\n"
        "        'model': isvc.spec.predictor.model}))\n")
    proc = subprocess.run([str(CLIENTS_PY), "-c", check, out["files"][0]],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["image"] == V2_IMAGE and got["command"] == ["tfdeploy-model-server"]
    assert "--model_base_path=/mnt/models" in got["args"]
    assert got["env"] == {"STORAGE_URI": "s3://bucket/deeplab"}
    assert got["ports"] == ([9000] if transport == "grpc" else [8080])
    assert (got["ready"], got["live"]) == ("/v2/health/ready", "/v2/health/live")
    assert got["model"] is None


@pytest.mark.parametrize("args,message", [
    (["--protocol", "v2"], "give --image"),
    (["--protocol", "v2", "--image", V2_IMAGE, "--transport", "rest",
      "--batcher-max-batch-size", "4"], "batcher speaks the v1 protocol"),
])
def test_kserve_v2_refusals(tmp_path, args, message):
    from conftest import run_cli

    proc = run_cli("manifest", "-t", "kserve", "s3://bucket/deeplab", *args, "-o", tmp_path,
                   check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not list(tmp_path.iterdir())


def test_k8s_protocol_v2_runs_our_server_probed_on_v2_health(tmp_path):
    """k8s --protocol v2: the Deployment (and a canary's) runs tfdeploy-model-server from
    the given image, probed on the model-free /v2/health URLs; strict 1.30 schemas."""
    from test_manifest import _manifest, _validate

    objects = _manifest("-t", "k8s", "s3://bucket/deeplab", "--protocol", "v2", "--image",
                        V2_IMAGE, "--canary-percent", "10", "--canary-version", "2",
                        "--stable-version", "1", "-o", tmp_path)
    _validate(objects)
    deployments = [o for o in objects if o["kind"] == "Deployment"]
    assert len(deployments) == 2
    for deployment in deployments:
        (c,) = deployment["spec"]["template"]["spec"]["containers"]
        assert c["image"] == V2_IMAGE and c["command"] == ["tfdeploy-model-server"]
        for probe in ("startupProbe", "readinessProbe"):
            assert c[probe]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
        assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
        assert "--rest_api_port=8501" in c["args"]
    # v1 (the default) keeps the official server and the model status URL
    (c,) = _manifest("-t", "k8s", "s3://bucket/deeplab", "-o", tmp_path / "v1")[1][
        "spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["tensorflow_model_server"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/v1/models/deeplab"


def test_compose_protocol_v2_healthcheck_is_v2_health(tmp_path, demo_base):
    """compose --protocol v2: our image, a healthcheck on /v2/health/ready; the file is
    what `docker-compose config` accepts (when installed)."""
    import shutil

    import yaml
    from conftest import run_cli

    out = json.loads(run_cli("manifest", "-t", "compose", demo_base, "--protocol", "v2",
                             "--image", V2_IMAGE, "-o", tmp_path, "--json").stdout)
    (service,) = yaml.safe_load(Path(out["files"][0]).read_text())["services"].values()
    assert service["image"] == V2_IMAGE
    assert "GET /v2/health/ready" in service["healthcheck"]["test"][-1]
    compose = shutil.which("docker-compose")
    if compose:
        proc = subprocess.run([compose, "-f", out["files"][0], "config", "-q"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr


def test_compose_v2_healthcheck_script_against_a_real_server(tmp_path):
    """The compose healthcheck's bash script, run against a real server: unhealthy
    while the model has no version, healthy once it serves."""
    from tfdeploy.deploy.manifests import healthcheck

    base = tmp_path / "later"
    base.mkdir()
    srv = ServerProcess("--model_name=later", f"--model_base_path={base}",
                        "--file_system_poll_wait_seconds=0.2", log_dir=tmp_path)
    try:
        srv.wait_for(lambda s: True, model="later")
        test = healthcheck("later", port=srv.rest_port, v2=True)
        assert test[:3] == ["CMD", "bash", "-c"]
        assert subprocess.run(test[1:], timeout=30).returncode != 0
        put_version(base, 1, save_half_plus_two(tmp_path / "hpt_src"))
        srv.wait_available(1, model="later")
        assert subprocess.run(test[1:], timeout=30).returncode == 0
    finally:
        srv.stop()


@pytest.mark.parametrize("target,source", [("k8s", "s3://bucket/deeplab"),
                                           ("compose", "{base}")])
@pytest.mark.parametrize("image", [None, "tensorflow/serving:2.15.0"])
def test_protocol_v2_needs_our_image(tmp_path, demo_base, target, source, image):
    from conftest import run_cli

    args = ["manifest", "-t", target, source.format(base=demo_base), "--protocol", "v2",
            "-o", tmp_path]
    proc = run_cli(*args, *(["--image", image] if image else []), check=False)
    assert proc.returncode == 2, proc.stderr
    assert "official TF Serving image does not have" in proc.stderr
    assert "give --image" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.iterdir())
