"""The embedded server behaves as tensorflow_model_server, over real sockets on 127.0.0.1,
with small models built here: a TF1 graph with ParseExample inputs and predict, classify
and regress signatures (saved as .pb and as .pbtxt), a TF2 ``tf.saved_model.save`` model
and a Keras export.  One server (module scope) serves them all."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from servers import ServerProcess, http
from small_models import (
    put_version,
    save_half_plus_two,
    save_keras_half_plus_two,
    save_tf1_half_plus_two,
)
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tfdeploy.tfs import tensors

MODELS = ("tf1", "tf1text", "tf2", "keras")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("fidelity")
    builders = {"tf1": save_tf1_half_plus_two,
                "tf1text": lambda p: save_tf1_half_plus_two(p, as_text=True),
                "tf2": save_half_plus_two, "keras": save_keras_half_plus_two}
    entries = []
    for name, build in builders.items():
        (root / name).mkdir()
        put_version(root / name, 1, build(root / f"{name}-model"))
        entries.append(f'config {{ name: "{name}" base_path: "{root / name}" '
                       f'model_platform: "tensorflow" }}')
    config = root / "models.config"
    config.write_text("model_config_list {\n  " + "\n  ".join(entries) + "\n}\n")
    srv = ServerProcess(f"--model_config_file={config}", log_dir=root)
    try:
        for name in MODELS:
            srv.wait_available(1, model=name)
        yield srv
    finally:
        assert srv.stop() == 0


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
    assert "is not a matrix" in err.value.details()
    assert server.status("keras") == {1: "AVAILABLE"}


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
    base = tmp_path / "tf2"
    base.mkdir()
    put_version(base, 1, save_half_plus_two(tmp_path / "model"))
    srv = ServerProcess("--model_name=tf2", f"--model_base_path={base}",
                        "--saved_model_tags=serve,tpu", "--max_num_load_retries=0",
                        log_dir=tmp_path)
    try:
        srv.wait_for(lambda s: s == {1: "END"}, model="tf2")
        code, body = http("GET", f"{srv.rest}/v1/models/tf2")
        message = body["model_version_status"][0]["status"]["error_message"]
        assert "Could not find meta graph def matching supplied tags: { serve tpu }" in message
    finally:
        assert srv.stop() == 0
