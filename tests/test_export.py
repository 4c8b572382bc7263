"""`tfdeploy export` / `inspect`: versions, signatures, parity, atomicity, bad input."""

from __future__ import annotations

import io
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT, export_json, run_cli
from PIL import Image

from tfdeploy.export.checkpoint import write_checkpoint
from tfdeploy.export.config import ModelConfig
from tfdeploy.palette import voc_colormap
from tfdeploy.tfs.versions import numeric_dirs, versions

SEED_SIGNATURES = {
    "predict_images": {
        "inputs": {"images": ("float", [1, None, None, 3]), "height": ("int32", None),
                   "width": ("int32", None)},
        "outputs": {"segmentation_map": ("int64", [1, None, None])},
    },
    "serving_default": {
        "inputs": {"image_bytes": ("string", [None])},
        "outputs": {"segmentation_map": ("uint8", [None, None, None]),
                    "mask_png": ("string", [None])},
    },
}


#: A demo export: the seed's two signatures and the demo's five class names, served
#: (an ignored int32 [N] input: TF Serving's REST API and batching need one).
DEMO_SIGNATURES = {**SEED_SIGNATURES, "class_names": {
    "inputs": {"unused": ("int32", [None])},
    "outputs": {"class_names": ("string", [None, 5])}}}


def _signature_table(info: dict, version: str) -> dict:
    (graph,) = info["versions"][version]["meta_graphs"]
    assert graph["tags"] == ["serve"]
    return {
        key: {kind: {n: (t["dtype"], t["shape"]) for n, t in sig[kind].items()}
              for kind in ("inputs", "outputs")}
        for key, sig in graph["signatures"].items()
    }


def test_demo_export_twice_gives_versions_1_and_2(tmp_path):
    base = tmp_path / "deeplab"
    first = export_json("--output", str(base))
    second = export_json("--output", str(base))
    assert (first["version"], second["version"]) == (1, 2)
    assert sorted(versions(base)) == [1, 2]
    assert first["verified"] and first["max_abs_logit_diff"] <= 1e-4
    assert first["warmup_records"] == 2
    assert (base / "1" / "assets.extra" / "tf_serving_warmup_requests").is_file()
    info = json.loads(run_cli("inspect", str(base), "--json").stdout)
    assert sorted(info["versions"]) == ["1", "2"]
    assert _signature_table(info, "2") == DEMO_SIGNATURES
    # human output names every signature and the method
    text = run_cli("inspect", str(base / "1")).stdout
    assert "predict_images" in text and "tensorflow/serving/predict" in text


def test_existing_version_refused_unless_overwrite(tmp_path, small_checkpoint):
    base = tmp_path / "m"
    export_json(str(small_checkpoint), "-o", str(base), "--no-verify")
    before = (base / "1" / "saved_model.pb").stat().st_mtime_ns
    proc = run_cli("export", str(small_checkpoint), "-o", str(base), "--version", "1", check=False)
    assert proc.returncode == 2
    assert "version 1 already exists" in proc.stderr and "--overwrite" in proc.stderr
    assert (base / "1" / "saved_model.pb").stat().st_mtime_ns == before
    again = export_json(str(small_checkpoint), "-o", str(base), "--version", "1", "--overwrite")
    assert again["replaced"] and again["version"] == 1
    assert sorted(numeric_dirs(base)) == [1]
    assert not [p for p in base.iterdir() if p.name.startswith(".")]
    # explicit version above the others is fine, and next default continues after it
    assert export_json(str(small_checkpoint), "-o", str(base), "--version", "7",
                       "--no-verify", "--no-warmup")["version"] == 7
    assert export_json(str(small_checkpoint), "-o", str(base), "--no-verify")["version"] == 8
    assert not (base / "7" / "assets.extra" / "tf_serving_warmup_requests").exists()


def test_serving_signatures_behave(demo_base):
    loaded = tf.saved_model.load(str(demo_base / "1"))
    image = np.asarray(Image.open(ROOT / "examples" / "scene_1.jpg").convert("RGB"))
    h, w = image.shape[:2]
    batch = tf.constant(image[None].astype(np.float32))
    by_float = loaded.signatures["predict_images"](
        images=batch, height=tf.constant(h), width=tf.constant([w]))["segmentation_map"]
    assert by_float.dtype == tf.int64 and by_float.shape == (1, h, w)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    out = loaded.signatures["serving_default"](image_bytes=tf.constant([buf.getvalue()] * 2))
    masks = out["segmentation_map"].numpy()
    assert masks.dtype == np.uint8 and masks.shape == (2, h, w)
    np.testing.assert_array_equal(masks[0], by_float.numpy()[0])
    png = Image.open(io.BytesIO(out["mask_png"].numpy()[1]))
    assert png.mode == "P" and png.size == (w, h)
    np.testing.assert_array_equal(np.asarray(png), masks[1])
    palette = np.array(png.getpalette()[: 3 * 5], np.uint8).reshape(5, 3)
    np.testing.assert_array_equal(palette, voc_colormap(5))
    with pytest.raises(tf.errors.InvalidArgumentError):
        loaded.signatures["serving_default"](image_bytes=tf.constant([b"not an image"]))
    small = io.BytesIO()
    Image.fromarray(image[:50, :60]).save(small, format="PNG")
    mixed = loaded.signatures["serving_default"](
        image_bytes=tf.constant([buf.getvalue(), small.getvalue()]))
    assert mixed["segmentation_map"].shape == (2, h, w)
    np.testing.assert_array_equal(mixed["segmentation_map"].numpy()[0], masks[0])


def test_demo_model_segments_fresh_scenes(demo_base):
    """The bundled demo checkpoint, served from its export, is visibly right: per-class
    IoU >= 0.9 on scenes it has never seen, of the demo images' size, shapes overlapping
    one another included (most of these scenes have some)."""
    from tfdeploy.demo.scenes import class_iou, scene

    loaded = tf.saved_model.load(str(demo_base / "1"))
    rng = np.random.default_rng(2026)
    encoded, labels, overlapping = [], [], 0
    for _ in range(32):
        stats: dict[str, int] = {}
        image, label = scene(rng, 240, 320, max_shapes=5, stats=stats)
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        encoded.append(buf.getvalue())
        labels.append(label)
        overlapping += stats["overlap_pixels"] > 0
    assert overlapping >= 12, overlapping
    predicted = np.concatenate([
        loaded.signatures["serving_default"](image_bytes=tf.constant(encoded[i:i + 4]))[
            "segmentation_map"].numpy() for i in range(0, len(encoded), 4)])
    truth = np.stack(labels)
    ious = class_iou(predicted, truth)
    assert min(ious.values()) >= 0.9, ious


def test_class_iou_counts_each_shape_class_over_all_pixels():
    from tfdeploy.demo.scenes import class_iou

    truth = np.array([[0, 1, 1, 4], [0, 3, 3, 4]])
    predicted = np.array([[0, 1, 4, 4], [3, 3, 3, 0]])
    # circle 1 of 2, triangle 2 of 3, star 1 of 3; no square anywhere counts as 1
    assert class_iou(predicted, truth) == pytest.approx(
        {"circle": 0.5, "square": 1.0, "triangle": 2 / 3, "star": 1 / 3})


@pytest.mark.parametrize("output_stride", [16, 8])
def test_seed_checkpoint_parity_with_slim_graph(tmp_path, output_stride):
    import slim_reference

    probe = np.random.default_rng(5).uniform(0, 255, (1, 67, 53, 3)).astype(np.float32)
    ckpt = tmp_path / "tboard_logs" / "16645" / "train"
    reference = slim_reference.make_seed_checkpoint(ckpt, probe, output_stride=output_stride)
    assert np.abs(reference).max() > 1.0  # logits of a realistic scale, not all ~0
    # point at the directory for OS16, at the state file for OS8: both must work
    target = ckpt if output_stride == 16 else ckpt / "checkpoint"
    result = export_json(str(target), "-o", str(tmp_path / "models"))
    assert result["format"] == "seed" and result["backbone"] == "resnet_v2_50"
    loaded = tf.saved_model.load(result["path"])
    ours = loaded.logits(tf.constant(probe)).numpy()
    assert np.max(np.abs(ours - reference)) <= 1e-4
    mask = loaded.signatures["predict_images"](
        images=tf.constant(probe), height=tf.constant([67]), width=tf.constant([53]))
    np.testing.assert_array_equal(mask["segmentation_map"].numpy(), reference.argmax(-1))


def test_seed_text_savedmodel_is_inspected(tmp_path):
    """Version dirs written by the seed's TF1 SavedModelBuilder (saved_model.pbtxt)."""
    import slim_reference

    version = tmp_path / "versions" / "1"
    slim_reference.write_seed_savedmodel(version)
    assert (version / "saved_model.pbtxt").is_file()
    out = json.loads(run_cli("inspect", str(tmp_path / "versions"), "--json").stdout)
    table = _signature_table(out, "1")
    assert table["predict_images"]["inputs"]["height"] == ("int32", None)
    assert table["predict_images"]["inputs"]["images"] == ("float", [1, None, None, 3])
    assert table["predict_images"]["outputs"]["segmentation_map"] == ("int64", [1, None, None])


def test_interrupted_export_leaves_nothing_loadable(tmp_path, small_checkpoint):
    base = tmp_path / "deeplab"
    proc = subprocess.Popen([sys.executable, "-m", "tfdeploy", "export", str(small_checkpoint),
                             "-o", str(base)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    # kill -9 once the SavedModel is being written into the temporary directory
    while time.monotonic() < deadline and not list(base.glob(".tfdeploy-export-*/variables")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(base.glob(".tfdeploy-export-*")), "the kill came too late to test anything"
    assert numeric_dirs(base) == {} and versions(base) == {}
    # the next export cleans the dead export's leftovers and writes version 1
    assert export_json(str(small_checkpoint), "-o", str(base), "--no-verify")["version"] == 1
    assert [p.name for p in base.iterdir()] == ["1"]


def _bad_copy(src: Path, dst: Path, mutate) -> Path:
    from tfdeploy.export.checkpoint import locate

    source = locate(src)
    weights = source.load_weights()
    config = mutate(weights) or source.config
    write_checkpoint(dst, config, weights)
    return dst


def _drop(weights):
    del weights[sorted(weights)[0]]


def _extra(weights):
    weights["DeepLab_v3/extra_head/weights"] = np.zeros((1, 1, 1, 1), np.float32)


def _reshape(weights):
    name = "DeepLab_v3/logits/biases"
    weights[name] = np.zeros((7,), np.float32)


@pytest.mark.parametrize("mutate,needle", [
    (_drop, "missing"),
    (_extra, "unexpected variable(s): DeepLab_v3/extra_head/weights"),
    (_reshape, "wrongly shaped variable(s): DeepLab_v3/logits/biases [7] != [5]"),
])
def test_bad_checkpoint_variables(tmp_path, small_checkpoint, mutate, needle):
    bad = _bad_copy(small_checkpoint, tmp_path / "bad", mutate)
    base = tmp_path / "models"
    proc = run_cli("export", str(bad), "-o", str(base), check=False)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert numeric_dirs(base) == {}


def test_bad_checkpoint_metadata(tmp_path, small_checkpoint):
    ckpt = tmp_path / "seedlike"
    shutil.copytree(small_checkpoint, ckpt)
    (ckpt / "config.json").unlink()
    proc = run_cli("export", str(ckpt), "-o", str(tmp_path / "m"), check=False)
    assert proc.returncode == 2 and "missing data.json" in proc.stderr, proc.stderr
    (ckpt / "data.json").write_text(json.dumps({"resnet_model": "resnet_v2_152",
                                                "number_of_classes": 21}))
    proc = run_cli("export", str(ckpt), "-o", str(tmp_path / "m"), check=False)
    assert proc.returncode == 2
    assert "unknown resnet_model 'resnet_v2_152'" in proc.stderr
    (ckpt / "data.json").write_text(json.dumps({"resnet_model": "resnet_v2_50"}))
    proc = run_cli("export", str(ckpt), "-o", str(tmp_path / "m"), check=False)
    assert proc.returncode == 2 and "missing for resnet_v2_50" in proc.stderr
    proc = run_cli("export", str(tmp_path / "nowhere"), check=False)
    assert proc.returncode == 2 and "no such checkpoint" in proc.stderr
    assert not (tmp_path / "m").exists() or numeric_dirs(tmp_path / "m") == {}


def test_config_roundtrip_and_validation():
    cfg = ModelConfig(num_classes=3, backbone="x", units=(1, 1, 1, 2), multi_grid=(1, 2))
    assert ModelConfig.from_json(json.loads(json.dumps(cfg.to_json()))) == cfg
    from tfdeploy.errors import UserError

    with pytest.raises(UserError, match="output_stride"):
        ModelConfig(output_stride=12)
    with pytest.raises(UserError, match="multi_grid"):
        ModelConfig(units=(1, 1, 1, 2), multi_grid=(1, 2, 4))


@pytest.mark.parametrize("resnet_model", ["resnet_v2_50", "resnet_v2_101"])
@pytest.mark.parametrize("output_stride", [8, 16])
def test_layout_matches_slim_graph_variables(resnet_model, output_stride):
    """Every variable the slim graph creates is one we load (or a known training-only
    one), with the same shape, for both backbones and output strides."""
    import slim_reference

    from tfdeploy.export.layout import is_training_only, variable_shapes

    config = ModelConfig.from_seed_args({"resnet_model": resnet_model,
                                         "output_stride": output_stride})
    graph = tf.Graph()
    with graph.as_default():
        images = tf.compat.v1.placeholder(tf.float32, [1, 64, 64, 3])
        slim_reference.build_graph(images, resnet_model, 21, output_stride)
        slim_vars = {v.op.name: tuple(v.shape.as_list())
                     for v in tf.compat.v1.global_variables()}
    served = {k: v for k, v in slim_vars.items() if not is_training_only(k, config)}
    assert served == variable_shapes(config)
    assert set(slim_vars) - set(served) == {
        f"{resnet_model}/postnorm/{v}" for v in ("beta", "gamma", "moving_mean",
                                                  "moving_variance")
    } | {f"{resnet_model}/logits/weights", f"{resnet_model}/logits/biases"}


def test_output_stride_4_is_atrous_after_the_root_block():
    """OS4 (the demo model's): no unit strides, each rate doubles where slim's
    ``stack_blocks_dense`` would have strided, and the logits keep the input's size."""
    from tfdeploy.export.layout import units
    from tfdeploy.export.model import DeepLabV3

    config = ModelConfig(num_classes=3, backbone="demo_resnet_v2", units=(1, 2, 2, 1),
                         base_depths=(4, 4, 4, 4), root_depth=4, aspp_depth=4,
                         output_stride=4, multi_grid=(1,))
    plan = units(config)
    assert [u.stride for u in plan] == [1] * 6
    assert [u.rate for u in plan] == [1, 2, 2, 4, 4, 8]
    logits = DeepLabV3(config).logits(tf.zeros([1, 37, 29, 3]))
    assert logits.shape == (1, 37, 29, 3)
    with pytest.raises(Exception, match="output_stride must be 4, 8, 16 or 32"):
        ModelConfig(output_stride=2)
