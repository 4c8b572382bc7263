"""Bring your own model: frozen model-zoo graphs exported into our SavedModel layout."""

from __future__ import annotations

import json
import shutil
import tarfile

import numpy as np
import pytest
import tensorflow as tf
from byom_models import frozen_graph, run_frozen, zoo_tarball
from conftest import export_json, run_cli
from PIL import Image

from tfdeploy.export import warmup


@pytest.fixture(scope="module")
def zoo_graph(tmp_path_factory):
    return frozen_graph(tmp_path_factory.mktemp("zoo") / "frozen_inference_graph.pb")


def _image(rng, h: int, w: int) -> np.ndarray:
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    img[h // 3: h // 2, w // 4: w // 2] = (220, 40, 10)
    return img


def _masks(version: str, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    loaded = tf.saved_model.load(version)
    h, w = image.shape[:2]
    a = loaded.signatures["predict_images"](
        images=tf.constant(image[None].astype(np.float32)), height=tf.constant([h]),
        width=tf.constant(w))["segmentation_map"].numpy()
    b = loaded.signatures["serving_default"](
        image_bytes=tf.constant([warmup.encode_png(image)]))["segmentation_map"].numpy()
    return a, b


def test_zoo_graph_exports_with_both_signatures_and_its_own_masks(zoo_graph, tmp_path, rng):
    base = tmp_path / "m"
    result = export_json(str(zoo_graph), "--output", str(base))
    assert result["source"] == "frozen_graph" and result["verified"]
    assert result["pixel_agreement"] == 1.0 and result["num_classes"] == 21
    # 21 classes: Pascal VOC's names, served as the class_names signature
    assert result["signatures"] == ["predict_images", "serving_default", "class_names"]
    meta = json.loads((base / "1" / "assets.extra" / "tfdeploy.json").read_text())
    assert meta["source"] == "frozen_graph"
    assert meta["config"]["input_tensor"] == "ImageTensor:0"
    assert meta["class_names"][:2] == ["background", "aeroplane"]  # 21 classes: Pascal VOC
    image = _image(rng, 61, 90)
    expected = run_frozen(zoo_graph, image)
    a, b = _masks(str(base / "1"), image)
    assert expected.shape == (1, 61, 90) and len(np.unique(expected)) > 1
    np.testing.assert_array_equal(a, expected)
    np.testing.assert_array_equal(b, expected.astype(np.uint8))


def test_zoo_folder_and_tarball_are_read(zoo_graph, tmp_path, rng):
    folder = tmp_path / "deeplabv3_test_pascal"
    folder.mkdir()
    shutil.copy(zoo_graph, folder / "frozen_inference_graph.pb")
    tarball = zoo_tarball(tmp_path / "zoo.tar.gz", zoo_graph)
    image = _image(rng, 40, 33)
    expected = run_frozen(zoo_graph, image)
    for n, given in enumerate((folder, tarball), start=1):
        result = export_json(str(given), "--output", str(tmp_path / "m"), "--no-verify")
        assert result["version"] == n and result["source"] == "frozen_graph"
        a, _ = _masks(result["path"], image)
        np.testing.assert_array_equal(a, expected)


def test_float_input_logits_output_graph_with_named_tensors(tmp_path, rng):
    graph = frozen_graph(tmp_path / "seg.pb", classes=7, seed=4, input_dtype=tf.float32,
                         input_name="input", output_name="logits", logits=True, batch=None)
    result = export_json(str(graph), "--output", str(tmp_path / "m"),
                         "--input-tensor", "input", "--output-tensor", "logits:0")
    assert result["verified"] and result["num_classes"] == 7
    image = _image(rng, 50, 47)
    expected = run_frozen(graph, image, "input:0", "logits:0").argmax(-1)
    a, b = _masks(result["path"], image)
    np.testing.assert_array_equal(a, expected)
    np.testing.assert_array_equal(b, expected.astype(np.uint8))


def test_frozen_graph_pixel_limit_applies(zoo_graph, tmp_path):
    result = export_json(str(zoo_graph), "--output", str(tmp_path / "m"), "--no-verify",
                         "--max-pixels", "40x40")
    loaded = tf.saved_model.load(result["path"])
    big = np.zeros((41, 40, 3), np.uint8)
    with pytest.raises(tf.errors.InvalidArgumentError, match="limit of 40x40"):
        loaded.signatures["serving_default"](image_bytes=tf.constant([warmup.encode_png(big)]))


@pytest.mark.parametrize("args, message", [
    (["--input-tensor", "pixels"], "no input tensor pixels:0"),
    (["--output-tensor", "Nope:0"], "no output tensor Nope:0"),
    (["--precision", "bfloat16"], "does not apply to a frozen graph"),
])
def test_bad_frozen_graph_options_fail_with_one_line(zoo_graph, tmp_path, args, message):
    proc = run_cli("export", str(zoo_graph), "--output", str(tmp_path / "m"), *args,
                   check=False)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "m" / "1").exists()


def test_not_a_graph_and_tarball_without_graph_are_refused(tmp_path):
    junk = tmp_path / "junk.pb"
    junk.write_bytes(b"\xff\xfe not a protobuf at all " * 10)
    Image.new("RGB", (4, 4)).save(tmp_path / "x.png")
    tarball = tmp_path / "empty.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(tmp_path / "x.png", arcname="deeplab/x.png")
    for given, message in ((junk, "not a frozen TensorFlow graph"),
                           (tarball, "no frozen_inference_graph.pb in this tarball")):
        proc = run_cli("export", str(given), "--output", str(tmp_path / "m"), check=False)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_keras_model_with_imagenet_preprocessing(tmp_path, rng):
    from byom_models import keras_model

    path = keras_model(tmp_path / "seg.keras", classes=4)
    result = export_json(str(path), "--output", str(tmp_path / "m"), "--preprocess", "imagenet")
    assert result["source"] == "keras" and result["verified"] and result["num_classes"] == 4
    image = _image(rng, 37, 52)
    model = tf.keras.models.load_model(path, compile=False)
    x = (image[None] / 255.0 - (0.485, 0.456, 0.406)) / (0.229, 0.224, 0.225)
    expected = model(x.astype(np.float32)).numpy().argmax(-1)
    a, b = _masks(result["path"], image)
    assert len(np.unique(expected)) > 1
    np.testing.assert_array_equal(a, expected)
    np.testing.assert_array_equal(b, expected.astype(np.uint8))


def test_fixed_size_keras_model_is_resized_both_ways(tmp_path, rng):
    from byom_models import keras_model

    path = keras_model(tmp_path / "fixed.keras", classes=3, size=32)
    result = export_json(str(path), "--output", str(tmp_path / "m"))
    image = _image(rng, 45, 60)
    a, b = _masks(result["path"], image)
    assert a.shape == (1, 45, 60)
    model = tf.keras.models.load_model(path, compile=False)
    small = tf.image.resize(image[None].astype(np.float32), (32, 32))
    expected = tf.image.resize(model(small), (45, 60)).numpy().argmax(-1)
    np.testing.assert_array_equal(a, expected)


def test_saved_model_source_with_minus_one_to_one(tmp_path, rng):
    from byom_models import segmenting_saved_model

    path = segmenting_saved_model(tmp_path / "src")
    result = export_json(str(path), "--output", str(tmp_path / "m"), "--preprocess", "-1..1")
    assert result["source"] == "saved_model" and result["verified"]
    image = _image(rng, 30, 41)
    source = tf.saved_model.load(str(path))
    x = tf.constant(image[None] / 127.5 - 1.0, tf.float32)
    expected = source.signatures["serving_default"](x=x)["logits"].numpy().argmax(-1)
    a, _ = _masks(result["path"], image)
    np.testing.assert_array_equal(a, expected)


def test_bad_keras_file_and_misplaced_options_fail_with_one_line(zoo_graph, tmp_path):
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a zip")
    for args, message in (([str(bad)], "not a loadable Keras model"),
                          ([str(zoo_graph), "--preprocess", "imagenet"],
                           "--preprocess/--input-size apply to Keras"),
                          ([str(bad), "--input-size", "12xq"], "HEIGHTxWIDTH")):
        proc = run_cli("export", *args, "--output", str(tmp_path / "m"), check=False)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


def test_mixed_sizes_in_one_request_give_each_image_its_own_mask(small_checkpoint, tmp_path,
                                                                 rng):
    """serving_default takes images of different sizes in one request; every mask is the
    one its image gets alone (nothing the other images or a pad add changes a pixel)."""
    import io

    result = export_json(str(small_checkpoint), "--output", str(tmp_path / "m"),
                         "--no-verify")
    loaded = tf.saved_model.load(result["path"])
    images = [_image(rng, 48, 64), _image(rng, 33, 70), _image(rng, 57, 21)]
    encoded = [warmup.encode_png(i) for i in images]
    out = loaded.signatures["serving_default"](image_bytes=tf.constant(encoded))
    maps, pngs = out["segmentation_map"].numpy(), out["mask_png"].numpy()
    assert maps.shape == (3, 57, 70)
    for k, image in enumerate(images):
        h, w = image.shape[:2]
        alone = loaded.signatures["serving_default"](
            image_bytes=tf.constant([encoded[k]]))["segmentation_map"].numpy()[0]
        np.testing.assert_array_equal(maps[k, :h, :w], alone)
        assert (maps[k, h:] == 255).all() and (maps[k, :, w:] == 255).all()
        png = np.asarray(Image.open(io.BytesIO(pngs[k])))
        np.testing.assert_array_equal(png, alone)


def test_inspect_names_the_source_kind(zoo_graph, tmp_path):
    base = tmp_path / "m"
    export_json(str(zoo_graph), "--output", str(base), "--no-verify", "--no-warmup")
    text = run_cli("inspect", str(base)).stdout
    assert ("source: model-zoo / frozen graph, ImageTensor:0 (uint8) -> "
            "SemanticPredictions:0, returns labels") in text
    info = json.loads(run_cli("inspect", str(base), "--json").stdout)
    assert info["versions"]["1"]["source"] == "frozen_graph"


def test_served_zoo_graph_answers_mixed_sizes_over_rest(zoo_graph, tmp_path, rng):
    """The wrapped model-zoo graph on the embedded server: one REST request with two
    images of different sizes gets each image's own mask, the graph's."""
    import base64
    import io

    from servers import ServerProcess, http

    base = tmp_path / "m"
    export_json(str(zoo_graph), "--output", str(base), "--no-verify")
    srv = ServerProcess("--model_name=deeplab", f"--model_base_path={base}",
                        log_dir=tmp_path)
    try:
        srv.wait_available(1)
        images = [_image(rng, 40, 52), _image(rng, 29, 61)]
        body = {"signature_name": "serving_default", "instances": [
            {"image_bytes": {"b64": base64.b64encode(warmup.encode_png(i)).decode()}}
            for i in images]}
        code, out = http("POST", f"{srv.rest}/v1/models/deeplab:predict", body)
        assert code == 200, out
        for image, row in zip(images, out["predictions"], strict=True):
            png = Image.open(io.BytesIO(base64.b64decode(row["mask_png"]["b64"])))
            np.testing.assert_array_equal(np.asarray(png), run_frozen(zoo_graph, image)[0])
    finally:
        assert srv.stop() == 0
