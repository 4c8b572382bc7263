"""export --tile: images larger than a tile are segmented tile by tile inside the graph."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import tensorflow as tf
from byom_models import frozen_graph, run_frozen
from conftest import ROOT, export_json, run_cli
from PIL import Image

from tfdeploy.export import warmup


def _masks(loaded, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(predict_images, serving_default) masks of one image."""
    h, w = image.shape[:2]
    a = loaded.signatures["predict_images"](
        images=tf.constant(image[None].astype(np.float32)), height=tf.constant([h]),
        width=tf.constant(w))["segmentation_map"].numpy()[0]
    b = loaded.signatures["serving_default"](
        image_bytes=tf.constant([warmup.encode_png(image)]))["segmentation_map"].numpy()[0]
    return a, b


def _far_from_tile_borders(length: int, tile: int, overlap: int) -> np.ndarray:
    """Pixels at least ``overlap`` away from every tile edge inside the image."""
    stride = tile - overlap
    starts = {min(k * stride, length - tile) for k in range((length - tile + stride - 1)
                                                             // stride + 1)}
    edges = sorted({e for s in starts for e in (s, s + tile)} - {0, length})
    index = np.arange(length)
    distance = np.min(np.abs(index[:, None] - np.array(edges)[None, :]), axis=1)
    return distance >= overlap


@pytest.fixture(scope="module")
def small_pair(small_checkpoint, tmp_path_factory):
    """The small checkpoint exported untiled and with --tile 64 (verified)."""
    work = tmp_path_factory.mktemp("tiling")
    plain = export_json(str(small_checkpoint), "--output", str(work / "plain"), "--no-verify",
                        "--no-warmup")
    tiled = export_json(str(small_checkpoint), "--output", str(work / "tiled"), "--tile", "64",
                        "--tile-overlap", "16", "--tile-batch", "3")
    return plain, tiled


def test_images_that_fit_a_tile_get_exactly_the_untiled_masks(small_pair, rng):
    plain, tiled = small_pair
    assert tiled["verified"] and tiled["tiling"] == {
        "tile": 64, "overlap": 16, "batch": 3, "max_pixels": 8192 * 8192}
    a, b = tf.saved_model.load(plain["path"]), tf.saved_model.load(tiled["path"])
    for h, w in ((64, 64), (50, 37), (64, 20)):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        for x, y in zip(_masks(a, image), _masks(b, image), strict=True):
            np.testing.assert_array_equal(x, y)
        batch = tf.constant(image[None].astype(np.float32))
        np.testing.assert_array_equal(a.logits(batch).numpy(), b.logits(batch).numpy())


def test_tiled_masks_are_full_size_and_agree_with_the_whole_image(tmp_path, demo_base):
    """The demo model tiled (128-pixel tiles, overlap 32) on 320x240 and 300x200 images:
    full-size masks from both signatures, equal to the untiled masks away from tile
    borders; a request mixing a tiled and an untiled image gives each its own mask."""
    result = export_json("--output", str(tmp_path / "m"), "--tile", "128", "--tile-overlap",
                         "32")
    assert result["verified"]
    tiled, whole = tf.saved_model.load(result["path"]), tf.saved_model.load(
        str(demo_base / "1"))
    scene = np.asarray(Image.open(ROOT / "examples" / "scene_1.jpg").convert("RGB"))
    images = [scene, scene[20:220, 10:310]]
    for image in images:
        h, w = image.shape[:2]
        got, got_bytes = _masks(tiled, image)
        expected = _masks(whole, image)[0]
        assert got.shape == (h, w)
        np.testing.assert_array_equal(got_bytes, got.astype(np.uint8))
        assert len(np.unique(expected)) > 1
        far = _far_from_tile_borders(h, 128, 32)[:, None] & _far_from_tile_borders(
            w, 128, 32)[None, :]
        assert far.sum() > 1000
        assert np.mean(got[far] == expected[far]) >= 0.995
        assert np.mean(got == expected) >= 0.98
    small = scene[:100, :90]
    out = tiled.signatures["serving_default"](image_bytes=tf.constant(
        [warmup.encode_png(images[1]), warmup.encode_png(small)]))["segmentation_map"].numpy()
    np.testing.assert_array_equal(out[0], _masks(tiled, images[1])[0])
    np.testing.assert_array_equal(out[1, :100, :90], _masks(whole, small)[0])


def test_frozen_graph_is_tiled_and_verified(tmp_path, rng):
    graph = frozen_graph(tmp_path / "frozen_inference_graph.pb")
    result = export_json(str(graph), "--output", str(tmp_path / "m"), "--tile", "32",
                         "--tile-overlap", "8")
    assert result["verified"] and result["tiling"]["tile"] == 32
    loaded = tf.saved_model.load(result["path"])
    small = rng.integers(0, 256, (30, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(_masks(loaded, small)[0], run_frozen(graph, small)[0])
    large = rng.integers(0, 256, (45, 70, 3), dtype=np.uint8)
    assert _masks(loaded, large)[1].shape == (45, 70)


def test_served_tiled_export_has_its_own_pixel_limit(small_checkpoint, tmp_path):
    """tfdeploy-model-server: an image above --max-pixels that the graph tiles is
    answered at full size; one above --tile-max-pixels is refused with 400 naming it."""
    from servers import ServerProcess, http

    base = tmp_path / "m"
    export_json(str(small_checkpoint), "--output", str(base), "--no-verify", "--tile", "64",
                "--max-pixels", "64x64", "--tile-max-pixels", "200x200")
    text = run_cli("inspect", str(base)).stdout
    assert ("tiling: images larger than 64x64 run in 64-pixel tiles, overlap 8, "
            "4 at a time; tiled images up to 200x200") in text
    info = json.loads(run_cli("inspect", str(base), "--json").stdout)
    assert info["versions"]["1"]["tiling"]["max_pixels"] == 40000
    srv = ServerProcess("--model_name=deeplab", f"--model_base_path={base}", log_dir=tmp_path)
    try:
        srv.wait_available(1)
        url = f"{srv.rest}/v1/models/deeplab:predict"

        def body(h: int, w: int) -> dict:
            image = np.full((h, w, 3), 90, np.uint8)
            return {"signature_name": "serving_default", "instances": [
                {"image_bytes": {"b64": base64.b64encode(warmup.encode_png(image)).decode()}}]}

        code, out = http("POST", url, body(120, 300))  # 36000 pixels: tiled, accepted
        assert code == 200, out
        png = Image.open(io.BytesIO(base64.b64decode(out["predictions"][0]["mask_png"]["b64"])))
        assert png.size == (300, 120)
        code, out = http("POST", url, body(201, 200))
        assert code == 400 and "--tile-max-pixels" in out["error"], out
        assert "limit of 200x200 for tiled images" in out["error"]
    finally:
        assert srv.stop() == 0


@pytest.mark.parametrize("args, message", [
    (["--tile", "16"], "--tile must be at least 32 pixels, got 16"),
    (["--tile", "64", "--tile-overlap", "64"], "--tile-overlap must be 0..63"),
    (["--tile", "64", "--tile-batch", "0"], "--tile-batch must be at least 1"),
    (["--tile", "64", "--tile-max-pixels", "big"], "--tile-max-pixels:"),
    (["--tile-overlap", "8"], "--tile-overlap applies with --tile"),
])
def test_bad_tiling_options_fail_with_one_line(tmp_path, args, message):
    proc = run_cli("export", "--output", str(tmp_path / "m"), *args, check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "m").exists()


def test_keras_model_is_tiled_and_verified(tmp_path, rng):
    """A Keras source (3x3 receptive field): tiled masks equal the model's own on the
    whole image except within a pixel of a tile's edge."""
    from byom_models import keras_model

    path = keras_model(tmp_path / "seg.keras", classes=4)
    result = export_json(str(path), "--output", str(tmp_path / "m"), "--tile", "32",
                         "--tile-overlap", "8")
    assert result["source"] == "keras" and result["verified"]
    loaded = tf.saved_model.load(result["path"])
    image = rng.integers(0, 256, (45, 70, 3), dtype=np.uint8)
    model = tf.keras.models.load_model(path, compile=False)
    expected = model(image[None].astype(np.float32)).numpy().argmax(-1)[0]
    got, got_bytes = _masks(loaded, image)
    assert got.shape == (45, 70) and len(np.unique(expected)) > 1
    np.testing.assert_array_equal(got_bytes, got.astype(np.uint8))
    assert np.mean(got == expected) >= 0.97
