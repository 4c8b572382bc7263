"""Class names (export --labels, served as a class_names signature, named by clients),
--precision for Keras/SavedModel/frozen-graph sources, and what inspect says of them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from byom_models import frozen_graph, keras_model, segmenting_saved_model
from conftest import export_json, run_cli
from PIL import Image

NAMES = ["sky", "road", "car"]


def _image(rng, h: int = 48, w: int = 64) -> np.ndarray:
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    img[h // 3: h // 2, w // 4: w // 2] = (220, 40, 10)
    return img


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """A 3-class Keras model exported with --labels (version 1) and without (version 2
    of another base: an export that serves no names)."""
    root = tmp_path_factory.mktemp("labelled")
    model = keras_model(root / "seg.keras", classes=3, seed=2)
    labels = root / "classes.txt"
    labels.write_text("\n".join(NAMES) + "\n\n")
    named = export_json(str(model), "--output", str(root / "named"), "--labels", str(labels))
    plain = export_json(str(model), "--output", str(root / "plain"), "--no-verify")
    export_json(str(segmenting_saved_model(root / "sm")), "--output", str(root / "wrapped_sm"),
                "--no-verify", "--no-warmup")
    return root, named, plain


def test_labels_are_stored_and_served_by_the_savedmodel(labelled):
    _, named, plain = labelled
    assert named["signatures"] == ["predict_images", "serving_default", "class_names"]
    meta = json.loads((Path(named["path"]) / "assets.extra" / "tfdeploy.json").read_text())
    assert meta["class_names"] == NAMES and meta["labels_file"].endswith("classes.txt")
    loaded = tf.saved_model.load(named["path"])
    out = loaded.signatures["class_names"](unused=tf.constant([0, 7]))["class_names"].numpy()
    assert out.shape == (2, 3) and [n.decode() for n in out[1]] == NAMES
    # 3 classes and no --labels: no names to serve, no signature
    assert plain["signatures"] == ["predict_images", "serving_default"]


def test_server_answers_class_names_over_grpc_and_rest_and_predict_names_classes(
        labelled, tmp_path, rng):
    """The embedded server serves the signature like any other (REST needs its dummy
    input); predict --json names each class's share of pixels and the overlay gets a
    legend, over both transports; an export without the signature says ``class N``."""
    from servers import ServerProcess, http

    from tfdeploy.client.grpc_transport import GrpcTransport
    from tfdeploy.client.predict import served_class_names

    root, named, _ = labelled
    picture = tmp_path / "scene.png"
    Image.fromarray(_image(rng, 96, 128)).save(picture)
    config = tmp_path / "models.config"
    config.write_text(
        "model_config_list {\n"
        f" config {{ name: 'named' base_path: '{root / 'named'}' model_platform: "
        "'tensorflow' }\n"
        f" config {{ name: 'plain' base_path: '{root / 'plain'}' model_platform: "
        "'tensorflow' }\n"
        f" config {{ name: 'sm' base_path: '{root / 'wrapped_sm'}' model_platform: "
        "'tensorflow' }\n}\n")
    # batching on, as tensorflow_model_server batches every signature with it: the
    # class_names signature's batch dimension lets its requests merge and split
    srv = ServerProcess(f"--model_config_file={config}", "--enable_batching",
                        log_dir=tmp_path)
    try:
        srv.wait_available(1, model="named")
        # wrapped Keras models and SavedModels load in a session, as TF Serving loads
        srv.wait_available(1, model="plain")
        srv.wait_available(1, model="sm")
        code, out = http("POST", f"{srv.rest}/v1/models/named:predict",
                         {"signature_name": "class_names", "inputs": {"unused": [0]}})
        assert code == 200 and out == {"outputs": [NAMES]}, out
        code, out = http("POST", f"{srv.rest}/v1/models/named:predict",
                         {"signature_name": "class_names", "instances": [0, 0]})
        assert code == 200 and out == {"predictions": [NAMES, NAMES]}, out
        grpc = GrpcTransport(srv.grpc_target)
        try:
            signatures = grpc.metadata("named")
            assert served_class_names(grpc, "named", None, signatures) == dict(enumerate(NAMES))
            assert served_class_names(grpc, "plain", None, grpc.metadata("plain")) == {}
        finally:
            grpc.close()
        from tfdeploy.client.predict import Client

        with Client(f"127.0.0.1:{srv.rest_port}", "rest", model="named") as client:
            assert client.names() == dict(enumerate(NAMES))
        for transport, address in (("grpc", srv.grpc_target),
                                   ("rest", f"127.0.0.1:{srv.rest_port}")):
            out_dir = tmp_path / transport
            report = json.loads(run_cli(
                "predict", str(picture), "--server", address, "--transport", transport,
                "--model", "named", "-o", str(out_dir), "--overlay", "--json").stdout)
            assert report["summary"]["class_names"] == {"0": "sky", "1": "road", "2": "car"}
            (result,) = report["results"]
            assert set(result["class_shares"]) <= set(NAMES) and result["class_shares"]
            assert sum(result["class_shares"].values()) == pytest.approx(1.0, abs=1e-4)
            overlay = Image.open(out_dir / "scene.overlay.jpg")
            assert overlay.size == (128, 96)
        report = json.loads(run_cli(
            "predict", str(picture), "--server", srv.grpc_target, "--model", "plain",
            "-o", str(tmp_path / "plain"), "--json").stdout)
        assert all(k.startswith("class ") for k in report["results"][0]["class_shares"])
    finally:
        assert srv.stop() == 0


def test_ui_backend_names_classes_from_the_server(labelled, tmp_path, rng):
    """tfdeploy ui's legend: the names the model serves (with --classes auto), else the
    page's own list."""
    from servers import ServerProcess

    from tfdeploy.export.warmup import encode_png
    from tfdeploy.webui.app import Backend

    root, _, _ = labelled
    srv = ServerProcess("--model_name=deeplab", f"--model_base_path={root / 'named'}",
                        log_dir=tmp_path)
    try:
        srv.wait_available(1)
        address = f"127.0.0.1:{srv.rest_port}"
        raw = encode_png(_image(rng))
        served = Backend(address, ["deeplab"]).predict("deeplab", "latest", raw)
        assert {c["name"] for c in served["classes"]} <= set(NAMES)
        given = Backend(address, ["deeplab"], classes=["a", "b", "c"], served_names=False)
        assert {c["name"] for c in given.predict("deeplab", "latest", raw)["classes"]} <= {
            "a", "b", "c"}
    finally:
        assert srv.stop() == 0


@pytest.mark.parametrize("lines, message", [
    ("sky\nroad\n", "has 2 class names, the model has 3 classes"),
    ("sky\n\nroad\ncar\n", ":2: an empty class name"),
    ("sky\nroad\nsky\n", "'sky' is also on line 1"),
    ("", "no class names"),
])
def test_bad_labels_fail_with_one_line(tmp_path, lines, message):
    model = keras_model(tmp_path / "seg.keras", classes=3)
    labels = tmp_path / "labels.txt"
    labels.write_text(lines)
    proc = run_cli("export", str(model), "--output", str(tmp_path / "m"), "--labels",
                   str(labels), check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "m" / "1").exists()


def test_keras_model_exports_in_bfloat16_verified_by_the_agreement_gate(tmp_path):
    model = keras_model(tmp_path / "seg.keras", classes=3, seed=5)
    base = tmp_path / "m"
    result = export_json(str(model), "--output", str(base), "--precision", "bfloat16",
                         "--min-agreement", "90", "--no-warmup")
    assert result["precision"] == "bfloat16" and result["verified"]
    assert result["min_pixel_agreement"] >= 0.9
    # the served graph computes in bfloat16 (a float32 export has no bfloat16 conv)
    graph = (base / "1" / "saved_model.pb").read_bytes()
    from tensorflow.core.protobuf import saved_model_pb2

    message = saved_model_pb2.SavedModel.FromString(graph)
    convs = [n for f in message.meta_graphs[0].graph_def.library.function
             for n in f.node_def if n.op == "Conv2D"]
    assert convs and all(n.attr["T"].type == tf.bfloat16.as_datatype_enum for n in convs)
    text = run_cli("inspect", str(base)).stdout
    assert "source: Keras model" in text and "computes in bfloat16" in text


@pytest.mark.parametrize("kind, precision, message", [
    ("frozen", "bfloat16", "does not apply to a frozen graph"),
    ("saved_model", "float16", "does not apply to a saved model"),
    ("keras", "int8", "--precision int8 does not apply to a keras"),
])
def test_precision_that_cannot_apply_is_one_line(tmp_path, kind, precision, message):
    path = (frozen_graph(tmp_path / "g.pb") if kind == "frozen" else
            segmenting_saved_model(tmp_path / "sm") if kind == "saved_model" else
            keras_model(tmp_path / "seg.keras"))
    proc = run_cli("export", str(path), "--output", str(tmp_path / "m"), "--precision",
                   precision, check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "m").exists()


def test_inspect_shows_source_labels_and_tiling(labelled, small_checkpoint, tmp_path):
    root, named, _ = labelled
    text = run_cli("inspect", named["path"]).stdout
    assert "source: Keras model, preprocess 0..255, returns logits" in text
    assert "labels: 3 classes: sky, road, car" in text
    info = json.loads(run_cli("inspect", named["path"], "--json").stdout)
    assert info["versions"]["1"]["class_names"] == NAMES
    assert info["versions"]["1"]["tiling"] is None
    base = tmp_path / "ck"
    export_json(str(small_checkpoint), "--output", str(base), "--no-verify", "--no-warmup")
    text = run_cli("inspect", str(base)).stdout
    assert "source: tfdeploy checkpoint" in text
    assert "labels: none recorded" in text
    # an export that tiles says so (export --tile records its settings)
    meta_file = base / "1" / "assets.extra" / "tfdeploy.json"
    meta = json.loads(meta_file.read_text())
    meta["tiling"] = {"tile": 513, "overlap": 64, "batch": 4, "max_pixels": 8192 ** 2}
    meta_file.write_text(json.dumps(meta))
    assert "tiling: images larger than 513x513 run in 513-pixel tiles, overlap 64" in \
        run_cli("inspect", str(base)).stdout


def test_overlay_draws_a_legend_of_the_classes_in_the_mask(rng):
    from tfdeploy.client import masks

    image = Image.fromarray(_image(rng, 96, 128))
    index = np.zeros((96, 128), np.uint8)
    index[10:40, 60:120], index[50:90, 5:50] = 1, 2
    mask = masks.palette_image(index)
    plain = np.asarray(masks.overlay(image, mask), np.int16)
    named = np.asarray(masks.overlay(image, mask, dict(enumerate(NAMES))), np.int16)
    assert named.shape == plain.shape
    assert np.abs(named[-20:, :20] - plain[-20:, :20]).max() > 50  # the legend's corner
    np.testing.assert_array_equal(named[:40], plain[:40])  # the rest untouched
    assert masks.legend_rows(masks.class_counts(mask), {0: "sky"})[1][1] == "class 1 15%"
    small = Image.fromarray(_image(rng, 30, 40))
    tiny = masks.palette_image(index[:30, :40])
    np.testing.assert_array_equal(np.asarray(masks.overlay(small, tiny, {0: "sky"})),
                                  np.asarray(masks.overlay(small, tiny)))


def test_signature_without_inputs_runs_over_grpc_and_is_refused_over_rest(tmp_path):
    """Why class_names takes a dummy input: tensorflow_model_server runs a signature
    without inputs from an empty gRPC PredictRequest, but its REST API refuses it
    ("Failed to get input map for signature"); the embedded server does the same."""
    from servers import ServerProcess, http

    from tfdeploy.client.grpc_transport import GrpcTransport

    class NoInputs(tf.Module):
        @tf.function(input_signature=[])
        def names(self):
            return {"class_names": tf.constant(NAMES)}

    module = NoInputs()
    tf.saved_model.save(module, str(tmp_path / "m" / "1"),
                        signatures={"names": module.names, "serving_default": module.names})
    srv = ServerProcess("--model_name=deeplab", f"--model_base_path={tmp_path / 'm'}",
                        log_dir=tmp_path)
    try:
        srv.wait_available(1)
        grpc = GrpcTransport(srv.grpc_target)
        try:
            out = grpc.predict("deeplab", "names", {})
            assert [n.decode() for n in out["class_names"]] == NAMES
        finally:
            grpc.close()
        url = f"{srv.rest}/v1/models/deeplab:predict"
        for body, name in (({"signature_name": "names", "inputs": {}}, "names"),
                           ({"instances": [1]}, "DEFAULT")):
            code, out = http("POST", url, body)
            assert code == 400 and out == {
                "error": f"Failed to get input map for signature: {name}"}, out
    finally:
        assert srv.stop() == 0
