"""`tfdeploy export --precision`: reduced-precision exports keep every client's contract,
agree with the float32 model on real photographs, fold BatchNorm exactly, and warn where
this CPU cannot run them fast."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import PHOTOGRAPHS, ROOT, export_json, run_cli
from PIL import Image
from test_export import SEED_SIGNATURES, _signature_table

from tfdeploy.export.config import ModelConfig
from tfdeploy.export.model import DeepLabV3, random_weights
from tfdeploy.export.precision import (
    cpu_flags,
    cpu_runs_fast,
    fold_batch_norm,
    measure_conv_speed,
    parse_cpu_flags,
    speed_warning,
)
from tfdeploy.tfs.versions import METADATA_FILE, numeric_dirs

EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni
bugs\t\t: sysret_ss_attrs

processor\t: 1
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni
"""


def test_parse_cpu_flags():
    assert {"avx512_bf16", "avx512f"} <= parse_cpu_flags(EPYC)
    assert "bugs" not in parse_cpu_flags(EPYC) and "sysret_ss_attrs" not in parse_cpu_flags(EPYC)
    # a flag only one core reports does not count
    mixed = EPYC.replace("avx512_bf16 avx512_vnni\n", "avx512_vnni\n", 1)
    assert "avx512_bf16" not in parse_cpu_flags(mixed) and "avx512_vnni" in parse_cpu_flags(mixed)
    assert parse_cpu_flags("processor : 0\nFeatures : fp asimd bf16\n") == {"fp", "asimd", "bf16"}
    assert parse_cpu_flags("") == frozenset()
    assert cpu_flags("/nonexistent/cpuinfo") == frozenset()


def test_cpu_runs_fast():
    epyc = parse_cpu_flags(EPYC)
    assert cpu_runs_fast("float32", frozenset())
    assert cpu_runs_fast("bfloat16", epyc) and not cpu_runs_fast("float16", epyc)
    assert cpu_runs_fast("bfloat16", frozenset({"amx_bf16", "amx_tile"}))
    assert not cpu_runs_fast("bfloat16", frozenset({"avx512f", "avx2"}))
    assert cpu_runs_fast("float16", frozenset({"avx512_fp16"}))


def test_speed_warning_quotes_a_real_measurement():
    """No warning where kernels are native; else a warning with this machine's timings."""
    epyc = parse_cpu_flags(EPYC)
    assert speed_warning("bfloat16", epyc) is None
    assert speed_warning("float16", epyc, has_gpu=True) is None

    def small(precision):
        return measure_conv_speed(precision, size=9, channels=32, repeats=2)

    warning = speed_warning("bfloat16", frozenset({"avx512f"}), measure=small)
    assert "no AVX512_BF16 or AMX_BF16" in warning
    m = re.search(r"measured ([\d.e+-]+) ms here, .* float32 \(([\d.e+-]+) ms\)", warning)
    assert m and float(m.group(1)) > 0 and float(m.group(2)) > 0, warning


def _small_config() -> ModelConfig:
    return ModelConfig(num_classes=5, backbone="small_resnet_v2", units=(1, 2, 1, 2),
                       base_depths=(8, 16, 16, 32), root_depth=8, aspp_depth=16,
                       output_stride=8, multi_grid=(1, 2))


def test_fold_batch_norm_is_exact_in_float32():
    cfg = _small_config()
    weights = random_weights(cfg, seed=11)
    folded = fold_batch_norm(weights, cfg.batch_norm_epsilon)
    # every convolution's BatchNorm is gone, replaced by a bias; preact norms remain
    assert not [n for n in folded if "/BatchNorm/" in n]
    assert "DeepLab_v3/ASPP_layer/conv_3x3_1/biases" in folded
    assert f"{cfg.scope}/block2/unit_2/bottleneck_v2/conv2/biases" in folded
    assert f"{cfg.scope}/block2/unit_2/bottleneck_v2/preact/moving_variance" in folded
    image = tf.constant(np.random.default_rng(2).uniform(0, 255, (2, 45, 37, 3)), tf.float32)
    plain = DeepLabV3(cfg, weights).logits(image).numpy()
    fused = DeepLabV3(cfg, weights, fold_batch_norm=True).logits(image).numpy()
    assert np.abs(plain).max() > 1.0
    assert np.max(np.abs(plain - fused)) <= 1e-4 * np.abs(plain).max()
    # and it really is a different graph: one fewer pass per folded norm
    assert len(DeepLabV3(cfg, weights, fold_batch_norm=True).variables_list) < len(weights)


@pytest.fixture(scope="module")
def bf16_demo(tmp_path_factory, photographs) -> dict:
    base = tmp_path_factory.mktemp("bf16") / "deeplab"
    return export_json("-o", str(base), "--precision", "bfloat16", "--probe", str(photographs))


def test_bfloat16_export_keeps_contract_and_agrees_on_photographs(bf16_demo, photographs):
    result = bf16_demo
    assert result["precision"] == "bfloat16" and result["batch_norm_folded"]
    names = [Path(i["name"]).stem for i in result["agreement"]["images"]]
    assert set(PHOTOGRAPHS) <= set(names)
    assert {"scene_1", "scene_2", "scene_3", "scene_4"} <= set(names)  # the demo images
    assert result["min_pixel_agreement"] >= 0.99
    # reduced precision really is in effect: logits differ, some pixels may flip
    assert result["max_abs_logit_diff"] > 1e-3
    base = Path(result["path"]).parent
    info = json.loads(run_cli("inspect", str(base), "--json").stdout)
    assert _signature_table(info, "1") == SEED_SIGNATURES  # every client keeps working
    assert info["versions"]["1"]["precision"] == "bfloat16"
    assert "bfloat16" in run_cli("inspect", str(base)).stdout
    meta = json.loads((Path(result["path"]) / METADATA_FILE).read_text())
    assert meta["precision"] == "bfloat16" and meta["agreement"]["min_pixel_agreement"] >= 0.99
    loaded = tf.saved_model.load(result["path"])
    conv_dtypes = {v.dtype for v in loaded.model.variables_list if v.name.endswith(
        "conv2/weights:0")}
    assert conv_dtypes == {tf.bfloat16}
    # BatchNorm folded: no convolution's statistics are left, only pre-activation norms
    assert not [v.name for v in loaded.model.variables_list if "BatchNorm" in v.name]
    assert any("preact/moving_mean" in v.name for v in loaded.model.variables_list)


def test_bfloat16_masks_served_agree_with_float32_export(bf16_demo, demo_base, photographs):
    """Through the serving_default signature (what clients call), on a photograph."""
    bf16 = tf.saved_model.load(bf16_demo["path"])
    f32 = tf.saved_model.load(str(demo_base / "1"))
    photo = (photographs / "astronaut.png").read_bytes()
    a = bf16.signatures["serving_default"](image_bytes=tf.constant([photo]))
    b = f32.signatures["serving_default"](image_bytes=tf.constant([photo]))
    assert a["segmentation_map"].dtype == tf.uint8
    masks = a["segmentation_map"].numpy(), b["segmentation_map"].numpy()
    assert masks[0].shape == (1, 512, 512)
    assert len(np.unique(masks[1])) > 1  # the photograph is not all background
    assert np.mean(masks[0] == masks[1]) >= 0.99


def test_agreement_below_minimum_fails_the_export(tmp_path):
    base = tmp_path / "m"
    proc = run_cli("export", "-o", str(base), "--precision", "bfloat16",
                   "--min-agreement", "100", check=False)
    assert proc.returncode == 1, proc.stderr
    assert "agrees with the float32 model on" in proc.stderr and "required 100.00%" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert numeric_dirs(base) == {} and not list(base.iterdir())


def test_float16_export_warns_unless_this_cpu_runs_it(tmp_path, small_checkpoint):
    proc = run_cli("export", str(small_checkpoint), "-o", str(tmp_path / "m"),
                   "--precision", "float16", "--json")
    result = json.loads(proc.stdout)
    assert result["precision"] == "float16" and result["min_pixel_agreement"] >= 0.99
    if cpu_runs_fast("float16", cpu_flags()) or tf.config.list_physical_devices("GPU"):
        assert result["warnings"] == [] and "warning:" not in proc.stderr
    else:
        (warning,) = result["warnings"]
        assert "float16 3x3 convolution measured" in warning
        assert f"warning: {warning}" in proc.stderr


def test_bad_probe_and_precision(tmp_path, small_checkpoint):
    proc = run_cli("export", str(small_checkpoint), "-o", str(tmp_path / "m"),
                   "--probe", str(tmp_path / "nowhere.jpg"), check=False)
    assert proc.returncode == 2 and "no such probe image" in proc.stderr
    (tmp_path / "notes.txt").write_text("not an image")
    proc = run_cli("export", str(small_checkpoint), "-o", str(tmp_path / "m"),
                   "--probe", str(tmp_path / "notes.txt"), check=False)
    assert proc.returncode == 2 and "not a readable image" in proc.stderr
    proc = run_cli("export", str(small_checkpoint), "--precision", "int8", check=False)
    assert proc.returncode == 2 and "int8" in proc.stderr


def test_large_probe_images_are_shrunk(tmp_path):
    from tfdeploy.export.agreement import MAX_PROBE_SIDE, probe_images

    big = np.asarray(Image.open(ROOT / "examples" / "scene_1.jpg").resize((1600, 1200)))
    Image.fromarray(big).save(tmp_path / "big.png")
    probes = dict(probe_images([tmp_path]))
    assert probes[str(tmp_path / "big.png")].shape == (385, MAX_PROBE_SIDE, 3)
    assert "synthetic probe" in probes and len(probes) == 6


def test_embedded_server_serves_bfloat16_export_to_unchanged_clients(bf16_demo, photographs,
                                                                     tmp_path):
    """The seed's float request and an encoded-image request, over gRPC, to a bfloat16
    version: same answers as the SavedModel in-process."""
    import grpc
    from servers import ServerProcess
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    image = np.asarray(Image.open(photographs / "chelsea.png").convert("RGB"))
    h, w = image.shape[:2]
    loaded = tf.saved_model.load(bf16_demo["path"])
    expected = loaded.signatures["predict_images"](
        images=tf.constant(image[None].astype(np.float32)), height=tf.constant(h),
        width=tf.constant(w))["segmentation_map"].numpy()[0]
    srv = ServerProcess("--model_name=deeplab",
                        f"--model_base_path={Path(bf16_demo['path']).parent}", log_dir=tmp_path)
    try:
        srv.wait_available(1)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(srv.grpc_target))
        seed = predict_pb2.PredictRequest()
        seed.model_spec.name = "deeplab"
        seed.model_spec.signature_name = "predict_images"
        seed.inputs["images"].CopyFrom(
            tf.make_tensor_proto(image.astype(np.float32), shape=[1, h, w, 3]))
        seed.inputs["height"].CopyFrom(tf.make_tensor_proto(h, shape=[1]))
        seed.inputs["width"].CopyFrom(tf.make_tensor_proto(w, shape=[1]))
        out = stub.Predict(seed, 60.0).outputs["segmentation_map"]
        assert out.dtype == tf.int64.as_datatype_enum
        np.testing.assert_array_equal(np.array(out.int64_val).reshape(h, w), expected)
        encoded = predict_pb2.PredictRequest()
        encoded.model_spec.name = "deeplab"
        encoded.inputs["image_bytes"].CopyFrom(
            tf.make_tensor_proto([(photographs / "chelsea.png").read_bytes()]))
        encoded.output_filter.append("mask_png")
        png = stub.Predict(encoded, 60.0).outputs["mask_png"].string_val[0]
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), expected)
    finally:
        assert srv.stop() == 0
