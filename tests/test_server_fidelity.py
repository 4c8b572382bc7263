"""The embedded server behaves as tensorflow_model_server, over real sockets on 127.0.0.1,
with small models built here: a TF1 graph with ParseExample inputs and predict, classify
and regress signatures (saved as .pb and as .pbtxt), a TF2 ``tf.saved_model.save`` model
and a Keras export.  One server (module scope) serves them all."""

from __future__ import annotations

import http.client as httpclient
import json
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow  # noqa: F401  (before tensorflow_serving: see tfdeploy/tfs/protos.py)
from servers import ServerProcess, http
from small_models import (
    add_tflite,
    half_plus_b_tflite,
    put_version,
    save_half_plus_two,
    save_keras_half_plus_two,
    save_tf1_half_plus_two,
    serve_one,
    tflite_tensor_names,
)
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tfdeploy.tfs import tensors

MODELS = ("tf1", "tf1text", "tf2", "keras")
METRICS = "/monitoring/prometheus/metrics"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("fidelity")
    builders = {"tf1": save_tf1_half_plus_two,
                "tf1text": lambda p: save_tf1_half_plus_two(p, as_text=True),
                "tf2": save_half_plus_two, "keras": save_keras_half_plus_two}
    entries = []
    for name, build in builders.items():
        (root / name).mkdir()
        model = build(root / f"{name}-model")
        if name == "tf1":
            _write_warmup(model)
        put_version(root / name, 1, model)
        entries.append(f'config {{ name: "{name}" base_path: "{root / name}" '
                       f'model_platform: "tensorflow" }}')
    config = root / "models.config"
    config.write_text("model_config_list {\n  " + "\n  ".join(entries) + "\n}\n")
    monitoring = root / "monitoring.config"
    monitoring.write_text(f'prometheus_config {{ enable: true path: "{METRICS}" }}\n')
    srv = ServerProcess(f"--model_config_file={config}",
                        f"--monitoring_config_file={monitoring}", log_dir=root)
    srv.config_entries = entries
    try:
        for name in MODELS:
            srv.wait_available(1, model=name)
        yield srv
    finally:
        assert srv.stop() == 0


def _write_warmup(model: Path) -> None:
    """One warmup record of each kind TF Serving replays (Predict, Classify, Regress,
    MultiInference) for the TF1 model."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    logs = []
    entry = prediction_log_pb2.PredictionLog()
    entry.predict_log.request.model_spec.name = "tf1"
    entry.predict_log.request.inputs["x"].CopyFrom(
        tensors.to_proto(np.ones((1, 1), np.float32)))
    logs.append(entry)
    for kind, signature in (("classify_log", "classify_x_to_y"),
                            ("regress_log", "regress_x_to_y")):
        entry = prediction_log_pb2.PredictionLog()
        _examples_request(getattr(entry, kind).request, "tf1", signature, _example(x=1.0))
        logs.append(entry)
    entry = prediction_log_pb2.PredictionLog()
    task = entry.multi_inference_log.request.tasks.add(method_name="tensorflow/serving/regress")
    task.model_spec.name, task.model_spec.signature_name = "tf1", "regress_x_to_y2"
    entry.multi_inference_log.request.input.example_list.examples.append(_example(x=1.0))
    logs.append(entry)
    (model / "assets.extra").mkdir()
    with tf.io.TFRecordWriter(str(model / "assets.extra" / "tf_serving_warmup_requests")) as w:
        for entry in logs:
            w.write(entry.SerializeToString())


@pytest.fixture(scope="module")
def stub(server):
    return prediction_service_pb2_grpc.PredictionServiceStub(
        grpc.insecure_channel(server.grpc_target))


def _predict(stub, model: str, x, key: str = "x", signature: str = ""):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    request.inputs[key].CopyFrom(tensors.to_proto(np.asarray(x, np.float32)))
    return stub.Predict(request, 30)


# -- item: signatures run as the graph allows --------------------------------------------
@pytest.mark.parametrize("model", ["tf1", "tf1text", "tf2"])
def test_inputs_of_other_shapes_are_fed_to_the_graph(server, stub, model):
    """x of shape [1] for a [?, 1] signature: the graph accepts it, so the server does."""
    response = _predict(stub, model, [2.0])
    assert tensors.from_proto(response.outputs["y"]).tolist() == [3.0]
    assert response.model_spec.signature_name == "serving_default"
    code, body = http("POST", f"{server.rest}/v1/models/{model}:predict",
                      {"instances": [2.0, 3.0, 4.0]})
    assert (code, body) == (200, {"predictions": [3.0, 3.5, 4.0]})
    code, body = http("POST", f"{server.rest}/v1/models/{model}:predict",
                      {"inputs": {"x": [[1.0], [2.0]]}})
    assert (code, body) == (200, {"outputs": [[2.5], [3.0]]})


def test_keras_export_serves_and_its_graph_decides_shapes(server, stub):
    response = _predict(stub, "keras", [[1.0], [4.0]])
    assert tensors.from_proto(response.outputs["output_0"]).tolist() == [[2.5], [4.0]]
    code, body = http("POST", f"{server.rest}/v1/models/keras:predict",
                      {"instances": [[1.0]]})
    assert (code, body) == (200, {"predictions": [[2.5]]})
    # a Dense layer needs a matrix: the graph refuses a vector, with its own words
    with pytest.raises(grpc.RpcError) as err:
        _predict(stub, "keras", [1.0, 2.0])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # in the words of whichever MatMul kernel runs it: oneDNN's, or Eigen's where this
    # CPU leaves oneDNN off (tfdeploy/tfs/onednn.py)
    assert ("is not a matrix" in err.value.details()
            or "different ndims: [2] vs. [1,1]" in err.value.details()), err.value.details()
    assert server.status("keras") == {1: "AVAILABLE"}


def test_warmup_replays_every_kind_of_record(server):
    assert "replayed 4 warmup request(s) for tf1 version 1" in server.log()


def test_tf1_model_with_shapeless_example_signatures_loads(server, stub):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "tf1"
    response = stub.GetModelMetadata(request, 30)
    sigs = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(sigs)
    methods = {k: v.method_name for k, v in sigs.signature_def.items()}
    assert methods == {"serving_default": "tensorflow/serving/predict",
                       "classify_x_to_y": "tensorflow/serving/classify",
                       "regress_x_to_y": "tensorflow/serving/regress",
                       "regress_x_to_y2": "tensorflow/serving/regress"}


def test_predict_checks_what_the_official_server_checks(server, stub):
    with pytest.raises(grpc.RpcError) as err:
        _predict(stub, "tf2", [[1.0]], key="z")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == ("input size does not match signature: 1!=1 len({z}) != "
                                   "len({x}). Sent extra: {z}. Missing but required: {x}.")
    with pytest.raises(grpc.RpcError) as err:
        _predict(stub, "tf2", [[1.0]], signature="nope")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.value.details() == 'Serving signature key "nope" not found.'
    request = predict_pb2.PredictRequest(output_filter=["w"])
    request.model_spec.name = "tf2"
    request.inputs["x"].CopyFrom(tensors.to_proto(np.ones((1, 1), np.float32)))
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(request, 30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == ("output tensor alias not found in signature: w Outputs "
                                   "expected to be in the set {y}.")


def test_saved_model_tags_pick_the_meta_graph(tmp_path: Path):
    """Tags no meta graph carries fail the load; the only model failing, the server does
    not start (as tensorflow_model_server), with the load's error in its message."""
    import subprocess
    import sys

    from conftest import ROOT

    base = tmp_path / "tf2"
    base.mkdir()
    put_version(base, 1, save_half_plus_two(tmp_path / "model"))
    proc = subprocess.run(
        [sys.executable, "-m", "tfdeploy.serving", "--model_name=tf2",
         f"--model_base_path={base}", "--port=0", "--grpc_host=127.0.0.1",
         "--saved_model_tags=serve,tpu", "--max_num_load_retries=0"],
        cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "1 servable(s) did not become available: {{{name: tf2 version: 1}" in proc.stderr
    assert "Could not find meta graph def matching supplied tags: { serve tpu }" in proc.stderr


# -- Classify, Regress, MultiInference ---------------------------------------------------
def _example(**features: float):
    from tensorflow.core.example import example_pb2

    example = example_pb2.Example()
    for name, value in features.items():
        example.features.feature[name].float_list.value.append(value)
    return example


def _examples_request(request, model: str, signature: str, *examples, context=None):
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if context is None:
        request.input.example_list.examples.extend(examples)
    else:
        request.input.example_list_with_context.context.CopyFrom(context)
        request.input.example_list_with_context.examples.extend(examples)
    return request


def test_classify_and_regress_over_grpc(stub):
    from tensorflow_serving.apis import classification_pb2, regression_pb2

    request = _examples_request(classification_pb2.ClassificationRequest(), "tf1",
                                "classify_x_to_y", _example(x=1.0), _example(x=2.0))
    response = stub.Classify(request, 30)
    assert [[(c.label, c.score) for c in cs.classes]
            for cs in response.result.classifications] == [[("", 2.5)], [("", 3.0)]]
    assert (response.model_spec.signature_name, response.model_spec.version.value) == (
        "classify_x_to_y", 1)
    # a context is merged into every example; an example's own feature wins
    request = _examples_request(regression_pb2.RegressionRequest(), "tf1text",
                                "regress_x_to_y2", _example(), _example(x=3.0),
                                context=_example(x=1.0))
    response = stub.Regress(request, 30)
    assert [r.value for r in response.result.regressions] == [3.5, 4.5]


@pytest.mark.parametrize("call,signature,message", [
    # no signature name: serving_default, a predict signature, is not shaped to classify
    ("Classify", "", "No classification inputs found in SignatureDef: "),
    ("Classify", "regress_x_to_y", 'Expected classification signature outputs to contain '
                                   'at least one of "classes" or "scores".'),
    ("Regress", "classify_x_to_y", "No regression outputs found in SignatureDef: "),
    ("Regress", "nope", "No signature was found with the name: nope"),
])
def test_classify_and_regress_signature_rules(stub, call, signature, message):
    from tensorflow_serving.apis import classification_pb2, regression_pb2

    request = (classification_pb2.ClassificationRequest() if call == "Classify"
               else regression_pb2.RegressionRequest())
    _examples_request(request, "tf1", signature, _example(x=1.0))
    with pytest.raises(grpc.RpcError) as err:
        getattr(stub, call)(request, 30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.details()
    request.input.Clear()
    request.model_spec.signature_name = "regress_x_to_y" if call == "Regress" else \
        "classify_x_to_y"
    with pytest.raises(grpc.RpcError) as err:
        getattr(stub, call)(request, 30)
    assert (err.value.code(), err.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                       "Input is empty.")


def test_multi_inference(stub):
    from tensorflow_serving.apis import inference_pb2

    request = inference_pb2.MultiInferenceRequest()
    for signature, method in (("classify_x_to_y", "tensorflow/serving/classify"),
                              ("regress_x_to_y2", "tensorflow/serving/regress")):
        task = request.tasks.add(method_name=method)
        task.model_spec.name, task.model_spec.signature_name = "tf1", signature
    request.input.example_list.examples.extend([_example(x=2.0), _example(x=4.0)])
    response = stub.MultiInference(request, 30)
    classify, regress = response.results
    assert [cs.classes[0].score for cs in classify.classification_result.classifications] \
        == [3.0, 4.0]
    assert [r.value for r in regress.regression_result.regressions] == [4.0, 5.0]
    assert regress.model_spec.signature_name == "regress_x_to_y2"
    request.tasks[1].model_spec.signature_name = "classify_x_to_y"
    with pytest.raises(grpc.RpcError) as err:
        stub.MultiInference(request, 30)
    assert err.value.details() == "Duplicate evaluation of signature: classify_x_to_y"
    request.tasks[1].model_spec.name = "tf2"
    with pytest.raises(grpc.RpcError) as err:
        stub.MultiInference(request, 30)
    assert err.value.details() == ("All ModelSpecs in a MultiInferenceRequest must access the "
                                   "same model name.")


def test_classify_and_regress_over_rest(server):
    url = f"{server.rest}/v1/models/tf1"
    code, body = http("POST", f"{url}:classify", {
        "signature_name": "classify_x_to_y", "examples": [{"x": 1.0}, {"x": [2.0]}]})
    assert (code, body) == (200, {"results": [[["", 2.5]], [["", 3.0]]]})
    code, body = http("POST", f"{url}/versions/1:regress", {
        "signature_name": "regress_x_to_y2", "context": {"x": 1.0},
        "examples": [{}, {"x": 3.0}]})
    assert (code, body) == (200, {"results": [3.5, 4.5]})
    for payload, message in (
            ({"signature_name": "regress_x_to_y"},
             "When method is classify, key 'examples' is expected and was not found"),
            ({"signature_name": "regress_x_to_y", "examples": []},
             "'examples' value is an empty array"),
            ({"signature_name": "regress_x_to_y", "examples": [{"x": [1.0, 2]}]},
             "Unexpected element type in feature: x expecting type: float")):
        code, body = http("POST", f"{url}:regress", payload)
        assert (code, body) == (400, {"error": message})


def test_signature_method_name_check(tmp_path: Path):
    from tensorflow_serving.apis import classification_pb2

    _, srv = serve_one(save_tf1_half_plus_two(tmp_path / "model"), tmp_path, "tf1",
                       "--enable_signature_method_name_check=true")
    try:
        srv.wait_available(1, model="tf1")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(srv.grpc_target))
        request = _examples_request(classification_pb2.ClassificationRequest(), "tf1",
                                    "regress_x_to_y", _example(x=1.0))
        with pytest.raises(grpc.RpcError) as err:
            stub.Classify(request, 30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details() == (
            "Expected classification signature method_name to be tensorflow/serving/classify."
            " Was: tensorflow/serving/regress")
        code, body = http("POST", f"{srv.rest}/v1/models/tf1:regress", {
            "signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]})
        assert (code, body) == (200, {"results": [3.0]})
    finally:
        assert srv.stop() == 0


# -- status codes and messages -----------------------------------------------------------
@pytest.mark.parametrize("method,path,message", [
    ("GET", "/v1/models", "Missing model name in request."),
    ("GET", "/v1/models/tf2/versions/abc", "Malformed request: GET /v1/models/tf2/versions/abc"),
    ("GET", "/v1/models/tf2/versions/18446744073709551615",
     "Failed to convert version: 18446744073709551615 to numeric."),
    ("GET", "/v1/models/tf2/", "Malformed request: GET /v1/models/tf2/"),
    ("POST", "/v1/models/tf2:explain", "Malformed request: POST /v1/models/tf2:explain"),
    ("POST", "/v1/models/tf2/versions/-1:predict",
     "Malformed request: POST /v1/models/tf2/versions/-1:predict"),
    ("PUT", "/v1/models/tf2:predict", "Malformed request: PUT /v1/models/tf2:predict"),
    ("POST", "/v1/models/tf2/labels/nope:predict", "Unrecognized servable version label: nope"),
])
def test_rest_malformed_urls_are_bad_requests(server, method, path, message):
    code, body = http(method, server.rest + path, b"{}" if method != "GET" else None)
    assert (code, body) == (400, {"error": message})


def test_rest_urls_are_case_insensitive_and_unknown_paths_not_found(server):
    code, body = http("POST", f"{server.rest}/V1/Models/tf2:predict", {"instances": [[1.0]]})
    assert (code, body) == (200, {"predictions": [[2.5]]})
    # /v2/ is the Open Inference Protocol now (tests/test_v2.py); other roots are unknown
    code, _ = http("GET", f"{server.rest}/v3/models/tf2")
    assert code == 404


def _send(port: int, method: str, target: str, body: bytes | None = None
          ) -> tuple[int, str, dict | str]:
    """One request with ``target`` on its request line byte for byte (http.client sends
    it as given; urllib would not take every target): (status, content type, body parsed
    as JSON where it is JSON)."""
    status, headers, raw = _exchange(port, method, target, body)
    kind = headers.get("content-type", "")
    try:
        return status, kind, json.loads(raw)
    except ValueError:
        return status, kind, raw.decode("utf-8", "replace")


def _not_found(name: str) -> tuple[int, dict]:
    return 404, {"error": f"Could not find any versions of model {name}"}


def test_rest_urls_match_the_raw_request_uri(server):
    """tensorflow_model_server matches its URL patterns against the request URI as sent,
    "?query" and "#fragment" included, never percent-decoded; only the model name and the
    label are decoded, once, after the match.  A verb in another case matches the
    pattern but is not served; a target that is no RFC 3986 URI is refused (400)."""
    predict = json.dumps({"instances": [[1.0]]}).encode()
    status = {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                        "status": {"error_code": "OK", "error_message": ""}}]}
    cases = [
        # the query is part of what the patterns see: a model name "tf2?x=1" ...
        ("GET", "/v1/models/tf2?x=1", _not_found("tf2?x=1")),
        ("GET", "/v1/models/tf2#top", _not_found("tf2#top")),
        ("POST", "/v1/models/tf2/labels/a?b:predict",
         (400, {"error": "Unrecognized servable version label: a?b"})),
        # ... or no pattern at all
        ("GET", "/v1/models/tf2/metadata?x=1",
         (400, {"error": "Malformed request: GET /v1/models/tf2/metadata?x=1"})),
        ("POST", "/v1/models/tf2:predict?x=1",
         (400, {"error": "Malformed request: POST /v1/models/tf2:predict?x=1"})),
        # not decoded before the match: %31 is no version digit, %3A no colon
        ("GET", "/v1/models/tf2/versions/%31",
         (400, {"error": "Malformed request: GET /v1/models/tf2/versions/%31"})),
        ("POST", "/v1/models/tf2%3Apredict",
         (400, {"error": "Malformed request: POST /v1/models/tf2%3Apredict"})),
        # the name is decoded once, after the match
        ("GET", "/v1/models/tf%32", (200, status)),
        ("GET", "/v1/models/tf%2532", _not_found("tf%32")),
        ("GET", "/v1/models/tf%202", _not_found("tf 2")),
        ("GET", "/v1/models/tf2%2Fx", _not_found("tf2/x")),
        # verbs in another case: matched, not served
        ("POST", "/v1/models/tf2:PREDICT",
         (400, {"error": "Malformed request: POST /v1/models/tf2:PREDICT"})),
        ("GET", "/v1/models/tf2/METADATA", (200, status)),
        # no URI: refused before any pattern
        *[("GET", target, (400, {"error": f"Malformed request URI: {target}"}))
          for target in ('/v1/models/tf2"x', "/v1/models/tf2%zz", "/v1/models/tf2#a#b",
                         "/v1/models/tf2|x")],
        # an absolute-form target loses its scheme and authority only
        ("GET", f"http://127.0.0.1:{server.rest_port}/v1/models/tf2", (200, status)),
        ("GET", f"http://127.0.0.1:{server.rest_port}/v1/models/tf2?x", _not_found("tf2?x")),
        # ours, unchanged: /v2 routes on the decoded path without its query
        ("GET", "/v2/health/live?x=1", (200, {"live": True})),
    ]
    wrong = []
    for method, target, expected in cases:
        code, _, body = _send(server.rest_port, method, target,
                              predict if method == "POST" else None)
        if (code, body) != expected:
            wrong.append((method, target, code, body))
    assert wrong == []


def test_rest_model_name_bytes_that_are_not_utf8_are_kept(server):
    """tensorflow_model_server keeps a decoded byte that is not UTF-8 (%FF) in the name and
    its message; JSON cannot hold a raw byte, so it comes as an escape a client can turn
    back into that byte (U+FFFD would lose it).  Metrics still render afterwards."""
    for method, target, expected in (
            ("GET", "/v1/models/tf%FF", b"Could not find any versions of model tf\xff"),
            ("GET", "/v1/models/tf2/labels/%FFx/metadata",
             b"Unrecognized servable version label: \xffx"),
            ("POST", "/v1/models/tf%FE:predict",
             b"Servable not found for request: Latest(tf\xfe)"),
            ("GET", "/v2/models/tf%FF/ready", b"Servable not found for request: Latest(tf\xff)")):
        raw = _exchange(server.rest_port, method, target,
                        b'{"instances": [[1.0]]}' if method == "POST" else None)[2]
        raw.decode("ascii")  # valid JSON text, no raw byte
        message = json.loads(raw)["error"]
        assert (target, message.encode("utf-8", "surrogateescape")) == (target, expected)
    code, kind, _ = _send(server.rest_port, "GET", METRICS)
    assert code == 200


def test_v2_model_names_decoded_once(server):
    """/v2 (the Open Inference Protocol) matches its paths as sent and decodes a model
    name once after the match: %2532 names "%32" (not "2"), %2F is part of a name."""
    def missing(name: str) -> tuple[int, dict]:
        return 404, {"error": f"Servable not found for request: Latest({name})"}

    cases = [
        ("/v2/models/tf%32/ready", (200, {"name": "tf2", "ready": True})),
        ("/v2/models/tf%2532/ready", missing("tf%32")),
        ("/v2/models/tf2%2Fready", missing("tf2/ready")),
        ("/v2/models/tf2%2Fversions%2F1/ready", missing("tf2/versions/1")),
        ("/v2/models/tf%202/ready?x=1", missing("tf 2")),
    ]
    wrong = []
    for target, expected in cases:
        code, _, body = _send(server.rest_port, "GET", target)
        if (code, body) != expected:
            wrong.append((target, code, body))
    assert wrong == []


def test_rest_metrics_path_matched_as_sent(server):
    """tensorflow_model_server looks its metrics path up as sent (any method, not
    decoded) and then refuses a query, in plain text."""
    code, kind, body = _send(server.rest_port, "GET", METRICS)
    assert (code, kind.split(";")[0]) == (200, "text/plain") and ":tensorflow:" in body
    code, _, body = _send(server.rest_port, "POST", METRICS, b"")
    assert code == 200 and ":tensorflow:" in body
    assert _send(server.rest_port, "GET", METRICS + "?x=1") == (
        400, "text/plain", f"Unexpected path: {METRICS}?x=1. Should be {METRICS}")
    code, _, _ = _send(server.rest_port, "GET", METRICS.replace("metrics", "%6Detrics"))
    assert code == 404


@pytest.mark.parametrize("raw,message", [
    (b"", "JSON Parse error: The document is empty"),
    (b"[1]", "JSON Value: [1] Is not object"),
    (b'{"instances": [["a"]]}', "input 'x': JSON Value: \"a\" Type: String is not of "
                                "expected type: float"),
])
def test_rest_body_errors(server, raw, message):
    code, body = http("POST", f"{server.rest}/v1/models/tf2:predict", raw)
    assert (code, body) == (400, {"error": message})


def test_model_status_as_tensorflow_model_server_answers_it(server):
    """GetModelStatus (gRPC and REST): a version label is not resolved, so without a
    version every version is listed, whatever the label (set or not); a model with no
    version known and a version not known are NOT_FOUND in the official words."""
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    models = model_service_pb2_grpc.ModelServiceStub(grpc.insecure_channel(server.grpc_target))

    def status(name: str, version: int | None = None, label: str = "", spec: bool = True):
        request = get_model_status_pb2.GetModelStatusRequest()
        if spec:
            request.model_spec.name = name
            request.model_spec.version_label = label
            if version is not None:
                request.model_spec.version.value = version
        try:
            response = models.GetModelStatus(request, 30)
        except grpc.RpcError as exc:
            return exc.code(), exc.details()
        return {s.version: s.state for s in response.model_version_status}

    available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert status("tf2", label="nope") == {1: available}
    code, body = http("GET", f"{server.rest}/v1/models/tf2/labels/nope")
    assert code == 200 and [(v["version"], v["state"]) for v in
                            body["model_version_status"]] == [("1", "AVAILABLE")]
    # the text tensorflow_model_server writes, as TF Serving's REST guide shows it
    raw = _exchange(server.rest_port, "GET", "/v1/models/tf2")[2].decode()
    assert raw == ('{\n "model_version_status": [\n  {\n   "version": "1",\n'
                   '   "state": "AVAILABLE",\n   "status": {\n    "error_code": "OK",\n'
                   '    "error_message": ""\n   }\n  }\n ]\n}\n'), raw
    code, kind, meta = _send(server.rest_port, "GET", "/v1/models/tf2/metadata")
    assert code == 200 and kind == "application/json"
    _, _, of_version = _send(server.rest_port, "GET", "/v1/models/tf2/versions/1/metadata")
    assert of_version == meta and meta["model_spec"] == {
        "name": "tf2", "version": "1", "signature_name": ""}
    not_found = grpc.StatusCode.NOT_FOUND
    for args, message in ((("ghost",), "Could not find any versions of model ghost"),
                          (("ghost", None, "stable"),
                           "Could not find any versions of model ghost"),
                          (("ghost", 3), "Could not find version 3 of model ghost"),
                          (("tf2", 9), "Could not find version 9 of model tf2"),
                          (("",), "Could not find any versions of model ")):
        assert status(*args) == (not_found, message)
    assert status("", spec=False) == (grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
    for path, message in (("ghost", "Could not find any versions of model ghost"),
                          ("ghost/labels/stable", "Could not find any versions of model ghost"),
                          ("tf2/versions/9", "Could not find version 9 of model tf2")):
        assert http("GET", f"{server.rest}/v1/models/{path}") == (404, {"error": message})


def test_unknown_label_over_grpc_is_invalid_argument(stub):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "tf2"
    request.model_spec.version_label = "nope"
    request.inputs["x"].CopyFrom(tensors.to_proto(np.ones((1, 1), np.float32)))
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(request, 30)
    assert (err.value.code(), err.value.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT, "Unrecognized servable version label: nope")


def test_labels_only_name_available_versions(server):
    from google.protobuf import text_format
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc
    from tensorflow_serving.config import model_server_config_pb2

    models = model_service_pb2_grpc.ModelServiceStub(grpc.insecure_channel(server.grpc_target))

    def reload(label_version: int):
        config = text_format.Parse(
            "model_config_list {" + " ".join(server.config_entries) + "}",
            model_server_config_pb2.ModelServerConfig())
        config.model_config_list.config[2].version_labels["stable"] = label_version
        return models.HandleReloadConfigRequest(
            model_management_pb2.ReloadConfigRequest(config=config), 60)

    with pytest.raises(grpc.RpcError) as err:
        reload(7)
    assert (err.value.code(), err.value.details()) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "Request to assign label to version 7 of model tf2, which is not currently available "
        "for inference")
    reload(1)
    code, body = http("POST", f"{server.rest}/v1/models/tf2/labels/stable:predict",
                      {"instances": [[1.0]]})
    assert (code, body) == (200, {"predictions": [[2.5]]})
    assert all(server.status(m) == {1: "AVAILABLE"} for m in MODELS)


def test_start_up_config_errors(tmp_path: Path):
    """A bad config file, or a label naming a version not loaded (without
    --allow_version_labels_for_unavailable_models), stops the start with the official
    message."""
    import subprocess
    import sys

    from conftest import ROOT

    bad = tmp_path / "bad.config"
    bad.write_text("model_config_list { config { name: ")
    base = tmp_path / "tf2"
    base.mkdir()
    put_version(base, 1, save_half_plus_two(tmp_path / "model"))
    labelled = tmp_path / "labelled.config"
    labelled.write_text(f'model_config_list {{ config {{ name: "tf2" base_path: "{base}" '
                        f'version_labels {{ key: "stable" value: 1 }} }} }}')
    for config, message in (
            (bad, "Error parsing text-format tensorflow.serving.ModelServerConfig"),
            (labelled, "Request to assign label to version 1 of model tf2, which is not "
                       "currently available for inference")):
        proc = subprocess.run(
            [sys.executable, "-m", "tfdeploy.serving", f"--model_config_file={config}",
             "--port=0", "--grpc_host=127.0.0.1"],
            cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]


def test_prefer_tflite_model_serves_the_versions_tflite_model(tmp_path: Path):
    """--prefer_tflite_model: a version with model.tflite answers from it (TensorFlow's
    TFLite interpreter, inputs of any batch size); without the flag, or without the file,
    the SavedModel answers.  The two compute y = x/2 + 3 and y = x/2 + 2."""
    source = add_tflite(save_half_plus_two(tmp_path / "hp2"), 3.0)
    body = {"instances": [[1.0], [3.0]]}
    for flags, expected in ((["--prefer_tflite_model=true"], [[3.5], [4.5]]),
                            ([], [[2.5], [3.5]])):
        run = tmp_path / f"run{len(flags)}"
        run.mkdir()
        _, srv = serve_one(source, run, "m", *flags)
        try:
            srv.wait_available(1, model="m")
            status, answer = http("POST", f"{srv.rest}/v1/models/m:predict", body)
            assert (status, answer) == (200, {"predictions": expected})
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "m"
            request.inputs["x"].CopyFrom(tensors.to_proto(np.array([[5.0]], np.float32)))
            stub = prediction_service_pb2_grpc.PredictionServiceStub(
                grpc.insecure_channel(srv.grpc_target))
            y = tensors.from_proto(stub.Predict(request, 30).outputs["y"])
            assert y.tolist() == [[5.0 / 2 + (3.0 if flags else 2.0)]]
        finally:
            assert srv.stop() == 0


def test_prefer_tflite_model_alone_gets_the_generated_signature(tmp_path: Path):
    """A version holding only model.tflite, without signature metadata, serves with
    --prefer_tflite_model as tensorflow_model_server serves it: one generated
    ``serving_default`` signature, its inputs and outputs the model's tensors keyed by
    their names without ":0"; an input of another shape resizes the interpreter's."""
    model = tmp_path / "tflite-only"
    model.mkdir()
    tflite = half_plus_b_tflite(3.0)
    (model / "model.tflite").write_bytes(tflite)
    (x_name,), (y_name,) = tflite_tensor_names(tflite)
    x_key, y_key = x_name.split(":")[0], y_name.split(":")[0]
    _, srv = serve_one(model, tmp_path, "m", "--prefer_tflite_model")
    try:
        srv.wait_available(1, model="m")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(srv.grpc_target))
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            metadata_field=["signature_def"])
        request.model_spec.name = "m"
        sigs = get_model_metadata_pb2.SignatureDefMap()
        stub.GetModelMetadata(request, 30).metadata["signature_def"].Unpack(sigs)
        assert list(sigs.signature_def) == ["serving_default"]
        sd = sigs.signature_def["serving_default"]
        assert (sd.method_name, list(sd.inputs), list(sd.outputs)) == (
            "tensorflow/serving/predict", [x_key], [y_key])
        assert (sd.inputs[x_key].name, sd.outputs[y_key].name) == (x_name, y_name)
        for x in (np.array([[1.0], [3.0]], np.float32), np.array([5.0], np.float32)):
            predict = predict_pb2.PredictRequest(output_filter=[y_key])
            predict.model_spec.name = "m"
            predict.inputs[x_key].CopyFrom(tensors.to_proto(x))
            y = tensors.from_proto(stub.Predict(predict, 30).outputs[y_key])
            assert y.tolist() == (x / 2 + 3.0).tolist()
        status, answer = http("POST", f"{srv.rest}/v1/models/m:predict",
                              {"instances": [[1.0]]})
        assert (status, answer) == (200, {"predictions": [[3.5]]})
    finally:
        assert srv.stop() == 0


def test_config_file_rewritten_before_the_first_poll_is_reloaded(tmp_path: Path):
    """A --model_config_file changed right after start-up, before the first poll, is a
    change like any other: the poll compares with the config loaded at start-up."""
    base = tmp_path / "hp2"
    base.mkdir()
    put_version(base, 1, save_half_plus_two(tmp_path / "model"))
    config = tmp_path / "models.config"

    def write(name: str) -> None:
        config.write_text(f'model_config_list {{ config {{ name: "{name}" '
                          f'base_path: "{base}" model_platform: "tensorflow" }} }}\n')

    write("first")
    srv = ServerProcess(f"--model_config_file={config}",
                        "--model_config_file_poll_wait_seconds=3", log_dir=tmp_path)
    try:
        srv.wait_available(1, model="first")
        write("second")  # the first poll is up to 3 s away
        srv.wait_for(lambda s: s.get(1) == "AVAILABLE", model="second", timeout=30)
        srv.wait_for(lambda s: not s, model="first", timeout=30)
    finally:
        assert srv.stop() == 0


# -- item: --rest_api_enable_cors_support ------------------------------------------------
CORS = {"access-control-allow-origin": "*", "access-control-allow-methods": "POST, GET",
        "access-control-allow-headers": "Content-Type"}
V2_CORS = {**CORS, "access-control-allow-headers": "Content-Type, Inference-Header-Content-Length",
           "access-control-expose-headers": "Inference-Header-Content-Length"}
#: libevent's Content-Type for an answer without one: tensorflow_model_server's preflights
PREFLIGHT = "text/html; charset=ISO-8859-1"


def _exchange(port: int, method: str, target: str, body: bytes | None = None,
              headers: dict | None = None) -> tuple[int, dict[str, str], bytes]:
    """(status, headers with lower-case names, raw body) of one request."""
    conn = httpclient.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, target, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _cors(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.startswith("access-control-")}


@pytest.fixture(scope="module")
def cors_server(tmp_path_factory):
    """One model served with --rest_api_enable_cors_support (and a small body cap)."""
    tmp = tmp_path_factory.mktemp("cors")
    _, srv = serve_one(save_half_plus_two(tmp / "model"), tmp, "m",
                       "--rest_api_enable_cors_support", "--max_request_bytes=4096",
                       f"--monitoring_config_file={_monitoring(tmp)}")
    try:
        srv.wait_available(1, model="m")
        yield srv
    finally:
        assert srv.stop() == 0


def _monitoring(tmp: Path) -> Path:
    path = tmp / "monitoring.config"
    path.write_text(f'prometheus_config {{ enable: true path: "{METRICS}" }}\n')
    return path


def test_rest_preflight_answered_without_cors_support(server):
    """tensorflow_model_server answers OPTIONS on its API itself, flag or not: 200 with an
    http(s) Origin, 400 without one, both empty; no CORS header without the flag."""
    origin = {"Origin": "http://localhost:8000"}
    for target in ("/v1/models/tf2", "/v1/models/tf2:predict", "/v1/anything",
                   "/v2/models/tf2/infer"):
        assert _exchange(server.rest_port, "OPTIONS", target, headers=origin)[::2] == (200, b"")
        code, headers, body = _exchange(server.rest_port, "OPTIONS", target)
        assert (code, headers["content-type"], body, _cors(headers)) == (400, PREFLIGHT, b"", {})
        code, _, _ = _exchange(server.rest_port, "OPTIONS", target, headers={"Origin": "null"})
        assert code == 400
    code, headers, _ = _exchange(server.rest_port, "GET", "/v1/models/tf2", headers=origin)
    assert (code, _cors(headers)) == (200, {})


def test_rest_cors_support(cors_server):
    """With the flag every answer of the API carries tensorflow_model_server's three CORS
    headers: successes, errors, preflights, and the HTTP layer's own refusals (413); the
    metrics path and unknown paths do not."""
    port, origin = cors_server.rest_port, {"Origin": "https://example.com"}
    predict = json.dumps({"instances": [[1.0]]}).encode()
    code, headers, body = _exchange(port, "POST", "/v1/models/m:predict", predict, origin)
    assert (code, json.loads(body), _cors(headers)) == (200, {"predictions": [[2.5]]}, CORS)
    assert headers["content-type"] == "application/json"
    for method, target, payload, status in (
            ("GET", "/v1/models/m", None, 200), ("GET", "/v1/models/m/metadata", None, 200),
            ("GET", "/v1/models/nope", None, 404), ("POST", "/v1/models/m:predict", b"[", 400),
            ("GET", "/v1/models/m:predict", None, 400),
            ("POST", "/v1/models/m:predict", b"[" * 5000, 413)):
        code, headers, _ = _exchange(port, method, target, payload, origin)
        assert (method, target, code, _cors(headers)) == (method, target, status, CORS)
    code, headers, body = _exchange(port, "OPTIONS", "/v1/models/m:predict", headers={
        **origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert (code, headers["content-type"], body, _cors(headers)) == (200, PREFLIGHT, b"", CORS)
    code, headers, body = _exchange(port, "OPTIONS", "/v1/models/m:predict")
    assert (code, body, _cors(headers)) == (400, b"", CORS)
    # ours: /v2 the same, its binary extension's header allowed and exposed
    code, headers, _ = _exchange(port, "GET", "/v2/models/m/ready", headers=origin)
    assert (code, _cors(headers)) == (200, V2_CORS)
    assert _cors(_exchange(port, "OPTIONS", "/v2/models/m/infer", headers=origin)[1]) == V2_CORS
    # outside the API: as tensorflow_model_server, no CORS headers
    for target in (METRICS, "/v3/models/m"):
        assert _cors(_exchange(port, "GET", target, headers=origin)[1]) == {}


_FETCH = """async ([url, body]) => {
    try {
        const r = await fetch(url, {method: 'POST', body: body,
                                    headers: {'Content-Type': 'application/json'}});
        return [r.status, await r.json()];
    } catch (e) { return ['blocked', String(e)]; }
}"""


@pytest.fixture
def other_origin(tmp_path):
    """A page served by a plain HTTP server on 127.0.0.1, another port: another origin (a
    real server: Chromium keeps pages of no known address from loopback addresses)."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    (tmp_path / "page.html").write_text("<html><body>cors</body></html>")
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(tmp_path))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/page.html"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_rest_cors_in_a_browser(server, cors_server, page, other_origin):
    """A page of another origin (Chromium, a JSON POST: preflighted) reads a prediction
    from a server with --rest_api_enable_cors_support and is blocked by one without."""
    page.goto(other_origin)
    body = json.dumps({"instances": [[1.0]]})
    allowed = page.evaluate(_FETCH, [f"{cors_server.rest}/v1/models/m:predict", body])
    assert allowed == [200, {"predictions": [[2.5]]}]
    error = page.evaluate(_FETCH, [f"{cors_server.rest}/v1/models/nope:predict", body])
    assert error == [404, {"error": "Servable not found for request: Latest(nope)"}]
    blocked = page.evaluate(_FETCH, [f"{server.rest}/v1/models/tf2:predict", body])
    assert blocked[0] == "blocked"
