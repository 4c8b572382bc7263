"""`tfdeploy export --precision`: reduced-precision exports keep every client's contract,
agree with the float32 model on real photographs, fold BatchNorm exactly, and warn where
this CPU cannot run them fast."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import PHOTOGRAPHS, ROOT, export_json, run_cli
from PIL import Image
from test_export import DEMO_SIGNATURES, _signature_table

from tfdeploy.export.config import ModelConfig
from tfdeploy.export.model import (
    DeepLabV3,
    fused_quantized_conv2d,
    quantized_matmul,
    random_weights,
)
from tfdeploy.export.precision import (
    INT8_SERVERS,
    cpu_flags,
    cpu_runs_fast,
    fold_batch_norm,
    measure_conv_speed,
    parse_cpu_flags,
    speed_warning,
)
from tfdeploy.export.writer import ExportResult
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


def test_folded_preacts_are_exact_in_float32_and_leave_the_int8_graph():
    cfg = _small_config()
    weights = random_weights(cfg, seed=11)
    unit = f"{cfg.scope}/block{{}}/unit_{{}}/bottleneck_v2"
    # a negative scale in one channel: its group (the units from this one to the next
    # shortcut convolution, block4/unit_1's) keeps its norms; the other groups fold
    weights[f"{unit.format(2, 2)}/preact/gamma"][0] = -0.7
    image = tf.constant(np.random.default_rng(3).uniform(0, 255, (2, 45, 37, 3)), tf.float32)
    plain = DeepLabV3(cfg, weights).logits(image).numpy()
    model = DeepLabV3(cfg, weights, fold_batch_norm=True, fold_preacts=True)
    assert np.max(np.abs(plain - model.logits(image).numpy())) <= 1e-4 * np.abs(plain).max()
    folded = {unit.format(1, 1), unit.format(2, 1), unit.format(4, 2)}
    assert model._bare_preacts == folded and model._output_scale is not None
    stats = {n.rsplit("/preact/", 1)[0] for n in model.named_weights() if "/preact/" in n}
    assert stats == {unit.format(2, 2), unit.format(3, 1), unit.format(4, 1)}

    # int8 follows its calibration; the folded units' norms are gone from its graph
    ranges = model.calibrate([np.asarray(image[0])])
    int8 = DeepLabV3(cfg, weights, precision="int8", fold_batch_norm=True,
                     activation_ranges=ranges)
    assert int8.fold_preacts
    graph = int8._int8_logits.get_concrete_function().graph
    norms = [op for op in graph.get_operations() if op.type.startswith("FusedBatchNorm")]
    assert len(norms) == 3  # the units that kept theirs
    agree = np.mean(int8.logits(image).numpy().argmax(-1) == plain.argmax(-1))
    assert agree >= 0.9, agree
    with pytest.raises(ValueError, match="calibrated with fold_preacts=True"):
        DeepLabV3(cfg, weights, precision="int8", fold_batch_norm=True,
                  activation_ranges=ranges, fold_preacts=False)

    # Every unit with a shortcut convolution: each alone in its group, so int8 quantizes
    # the same values folded or not; and the last writes the backbone's output unscaled.
    one = ModelConfig(num_classes=5, backbone="small_resnet_v2", units=(1, 1, 1, 1),
                      base_depths=(8, 16, 24, 32), root_depth=8, aspp_depth=16,
                      output_stride=16, multi_grid=(1,))
    weights = random_weights(one, seed=5)
    plain = DeepLabV3(one, weights).logits(image).numpy()
    model = DeepLabV3(one, weights, fold_batch_norm=True, fold_preacts=True)
    assert model._output_scale is None and len(model._bare_preacts) == 4
    assert np.max(np.abs(plain - model.logits(image).numpy())) <= 1e-4 * np.abs(plain).max()
    int8 = {fold: DeepLabV3(one, weights, precision="int8", fold_batch_norm=True,
                            activation_ranges=DeepLabV3(
                                one, weights, fold_batch_norm=True,
                                fold_preacts=fold).calibrate([np.asarray(image[0])]))
            .logits(image).numpy() for fold in (False, True)}
    assert np.max(np.abs(int8[True] - plain)) > 0.1  # int8 rounds: the check below means it
    assert np.max(np.abs(int8[True] - int8[False])) <= 1e-4 * np.abs(plain).max()


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
    assert _signature_table(info, "1") == DEMO_SIGNATURES  # every client keeps working
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
    proc = run_cli("export", str(small_checkpoint), "--precision", "int4", check=False)
    assert proc.returncode == 2 and "int4" in proc.stderr


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


# -- int8 ---------------------------------------------------------------------------------
def test_int8_speed_warning_quotes_a_real_measurement():
    epyc = parse_cpu_flags(EPYC)
    assert cpu_runs_fast("int8", epyc) and cpu_runs_fast("int8", frozenset({"amx_int8"}))
    assert speed_warning("int8", epyc) is None

    def small(precision):
        return measure_conv_speed(precision, size=9, channels=32, repeats=2)

    warning = speed_warning("int8", frozenset({"avx512f", "avx2"}), measure=small)
    assert "no AVX512_VNNI or AVX_VNNI or AMX_INT8" in warning
    m = re.search(r"an int8 3x3 convolution measured ([\d.e+-]+) ms here, .* float32 "
                  r"\(([\d.e+-]+) ms\)", warning)
    assert m and float(m.group(1)) > 0 and float(m.group(2)) > 0, warning


@pytest.fixture(scope="module")
def int8_demo(tmp_path_factory, photographs) -> dict:
    """The demo checkpoint in int8, calibrated on the photographs only: the demo images
    and the synthetic probe are held out.  The gate is lowered to 95%: the demo model,
    trained on drawn shapes, has near-tied logits on photographs (int8 agrees on ~97-99%
    of their pixels, bfloat16 on ~99.4%)."""
    base = tmp_path_factory.mktemp("int8") / "deeplab"
    proc = run_cli("export", "-o", str(base), "--precision", "int8", "--probe",
                   str(photographs), "--calibration", str(photographs),
                   "--min-agreement", "95", "--json")
    return {**json.loads(proc.stdout), "stderr": proc.stderr}


def test_int8_export_keeps_contract_and_agrees_on_photographs(int8_demo, photographs):
    result = int8_demo
    assert result["precision"] == "int8" and result["batch_norm_folded"]
    calibrated = {str(photographs / f"{n}.png") for n in PHOTOGRAPHS}
    assert result["calibration"] == {"images": 4, "names": sorted(calibrated)}
    images = {i["name"]: i for i in result["agreement"]["images"]}
    assert {n for n, i in images.items() if i["calibration"]} == calibrated
    held = [i for n, i in images.items() if not i["calibration"]]
    assert {Path(i["name"]).stem for i in held} >= {"scene_1", "scene_2", "scene_3",
                                                     "scene_4", "synthetic probe"}
    assert result["agreement"]["calibration"]["images"] == 4
    assert result["agreement"]["held_out"]["images"] == len(held) == 5
    assert result["agreement"]["held_out"]["min_pixel_agreement"] == pytest.approx(
        min(i["pixel_agreement"] for i in held), abs=1e-6)
    # held-out images like the training data: >= 99% of the pixels on every one;
    # the photographs (out of the demo's domain): >= 96% each, >= 97% pooled
    assert min(i["pixel_agreement"] for i in held) >= 0.99
    assert result["min_pixel_agreement"] >= 0.96
    assert result["agreement"]["calibration"]["pixel_agreement"] >= 0.97
    assert result["max_abs_logit_diff"] > 1e-3  # really int8
    # which servers can run it: said at export time, in tfdeploy.json and by inspect
    servers = INT8_SERVERS["fused"]
    assert "2.17 or later" in servers and "--int8-kernels portable" in servers
    assert result["servers"] == servers and f"warning: {servers}" in result["stderr"]
    assert result["int8_kernels"] == "fused"
    meta = json.loads((Path(result["path"]) / METADATA_FILE).read_text())
    assert meta["precision"] == "int8" and meta["servers"] == servers
    assert meta["int8_kernels"] == "fused"
    assert meta["calibration"]["images"] == 4
    base = Path(result["path"]).parent
    info = json.loads(run_cli("inspect", str(base), "--json").stdout)
    assert _signature_table(info, "1") == DEMO_SIGNATURES  # every client keeps working
    assert info["versions"]["1"]["precision"] == "int8"
    assert info["versions"]["1"]["servers"] == servers
    text = run_cli("inspect", str(base)).stdout
    assert "int8" in text and "tensorflow/serving:<version>-mkl" in text
    # the int8 kernels are in the graph, their weights stored as int8 variables (one
    # copy in a server, which copies a graph's constants into every signature's
    # executor); the first convolution and the logits stay float32 variables
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel.FromString(
        (Path(result["path"]) / "saved_model.pb").read_bytes())
    nodes = [n for f in sm.meta_graphs[0].graph_def.library.function for n in f.node_def]
    ops = [n.op for n in nodes]
    fused = [list(n.attr["fused_ops"].list.s) for n in nodes if n.op == "_FusedQuantizedConv2D"]
    assert fused.count([b"BiasAdd"]) == 3  # float32 out: the atrous ASPP branches
    # the fused kernels: every unit's conv3 (with its shortcut summed in) or merged
    # residual, and the ASPP's 1x1 branch, as one quantized matmul each
    assert ops.count("_QuantizedMatMul") == 9 + 1
    # conv1 and conv2 of the demo's nine units: the graph is written once, not once per
    # trace
    assert fused.count([b"BiasAdd", b"Relu", b"Requantize"]) == 2 * 9
    assert len(fused) == 3 + 2 * 9 and not [o for o in ops if o.startswith("QuantizedConv")]
    constant_bytes = sum(len(n.attr["value"].tensor.tensor_content) for n in nodes
                         if n.op == "Const")
    assert constant_bytes < 100_000  # biases and scales; the weights are variables
    # serving_default calls the int8 model from one place, for same-size batches and
    # mixed sizes alike
    assert _model_call_sites(sm.meta_graphs[0], "serving_default") == 1
    loaded = tf.saved_model.load(result["path"])
    names = {v.name for v in loaded.model.variables_list}
    assert {"demo_resnet_v2/conv1/weights:0", "DeepLab_v3/logits/weights:0"} <= names
    assert not [n for n in names if "unit_1/bottleneck_v2/conv2/weights" in n]
    int8_weights = {v.name: v for v in loaded.model.int8_weights.values()}
    assert "demo_resnet_v2/block1/unit_1/bottleneck_v2/conv2/int8_weights:0" in int8_weights
    assert {v.dtype for v in int8_weights.values()} == {tf.int8}
    merged = {n.split("/residual/")[0] for n in int8_weights if "/residual/" in n}
    assert merged and not [n for n in int8_weights if n.split("/conv3/")[0] in merged
                           or n.split("/shortcut/")[0] in merged]  # replaced: not stored


def _model_call_sites(meta_graph, signature: str) -> int:
    """How many function-call nodes reachable from ``signature`` call the model's traced
    logits function, through cond branches, loop bodies and nested calls."""
    library = {f.signature.name: f for f in meta_graph.graph_def.library.function}

    def callees(nodes):
        for node in nodes:
            for value in node.attr.values():
                if value.HasField("func"):
                    yield value.func.name
                yield from (f.name for f in value.list.func)

    def count(name: str) -> int:
        return sum(1 if callee.startswith("__inference__logits") else count(callee)
                   for callee in callees(library[name].node_def) if callee in library)

    outputs = {t.name.split(":")[0] for t in meta_graph.signature_def[signature].outputs.values()}
    return sum(count(f) for f in callees(n for n in meta_graph.graph_def.node
                                         if n.name in outputs))


@pytest.mark.parametrize("signed", [False, True])
def test_fused_int8_matmul_is_the_arithmetic_it_stands_for(signed):
    """The fused kernel of the 1x1 convolutions (``quantized_matmul``: per-channel weight
    scales, bias, the shortcut summed in, float32 out) against float64 arithmetic on the
    same int8 values: float32 rounding apart, equal; without the addend too.  On a CPU
    without VNNI or AMX, oneDNN adds pairs of 8-bit products in 16 bits, saturating: full
    range 8-bit weights against full range activations are off by up to ~30 there (seen
    on an AVX2-only AMD EPYC), 7-bit weights exact, so there the weights take 7 bits
    (what NNCF's "overflow fix" does for such CPUs)."""
    rng = np.random.default_rng(3)
    m, k, n, top = 300, 96, 40, 6.0
    levels = 127 if signed else 255
    ints = rng.integers(-levels if signed else 0, levels + 1, (m, k))
    a = tf.bitcast(tf.constant(ints.astype(np.int8 if signed else np.uint8)),
                   tf.qint8 if signed else tf.quint8)
    wlevels = 127 if cpu_runs_fast("int8", cpu_flags()) else 63
    w = rng.integers(-wlevels, wlevels + 1, (k, n)).astype(np.int8)
    wmax = (rng.random(n) * 2 + 0.01).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    addend = rng.standard_normal((m, n)).astype(np.float32) * 50
    exact = (ints * (top / levels)) @ (w.astype(np.float64) * (wmax / 127.0)) + bias
    fused = tf.function(lambda *extra: quantized_matmul(  # an op of graphs only
        a, -top if signed else 0.0, top, w, wmax, bias, *extra))
    for extra in (None, addend):
        got = (fused() if extra is None else fused(tf.constant(extra))).numpy()
        want = exact if extra is None else exact + extra
        assert got.dtype == np.float32 and got.shape == (m, n)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4 * np.abs(want).max())


def test_int8_export_calibrates_on_the_probes_by_default(tmp_path, small_checkpoint):
    proc = run_cli("export", str(small_checkpoint), "-o", str(tmp_path / "m"),
                   "--precision", "int8", "--min-agreement", "0", "--json")
    result = json.loads(proc.stdout)
    names = [i["name"] for i in result["agreement"]["images"]]
    assert result["calibration"] == {"images": 5, "names": names}  # synthetic + 4 demo
    assert result["agreement"]["held_out"]["images"] == 0
    text = run_cli("export", str(small_checkpoint), "-o", str(tmp_path / "m"),
                   "--precision", "int8", "--min-agreement", "0").stdout
    assert "calibrated on 5 images" in text and "no held-out images" in text
    # a relative --calibration path names the same files as the probes' absolute ones
    result = export_json(str(small_checkpoint), "-o", str(tmp_path / "m"), "--precision",
                         "int8", "--min-agreement", "0", "--calibration", "examples")
    assert result["calibration"]["images"] == 4
    flags = {Path(i["name"]).stem: i["calibration"] for i in result["agreement"]["images"]}
    assert flags == {"synthetic probe": False, "scene_1": True, "scene_2": True,
                     "scene_3": True, "scene_4": True}


def test_bad_calibration(tmp_path, small_checkpoint):
    out = str(tmp_path / "m")
    proc = run_cli("export", str(small_checkpoint), "-o", out, "--precision", "int8",
                   "--calibration", str(tmp_path / "nowhere"), check=False)
    assert proc.returncode == 2 and "no such calibration image" in proc.stderr
    (tmp_path / "empty").mkdir()
    proc = run_cli("export", str(small_checkpoint), "-o", out, "--precision", "int8",
                   "--calibration", str(tmp_path / "empty"), check=False)
    assert proc.returncode == 2 and "no images" in proc.stderr
    proc = run_cli("export", str(small_checkpoint), "-o", out, "--calibration",
                   str(ROOT / "examples"), check=False)
    assert proc.returncode == 2 and "only an int8 export is calibrated" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "m").exists()
    proc = run_cli("export", str(small_checkpoint), "-o", out, "--int8-kernels", "portable",
                   check=False)
    assert proc.returncode == 2 and "only an int8 export runs on int8 kernels" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "m").exists()


def test_int8_fallback_blocks_in_bfloat16(tmp_path, small_checkpoint):
    """--fallback-precision bfloat16: the blocks the sensitivity pass keeps out of int8
    compute in bfloat16 (weights stored in it, cast at the block's boundaries), as do the
    first convolution and the ASPP's projection, the pass judged against float32; the
    summary and tfdeploy.json say so.  A gate of 100% (which
    bfloat16 does not reach either: not verified) keeps every block out of int8."""
    proc = run_cli("export", str(small_checkpoint), "-o", str(tmp_path / "m"), "--precision",
                   "int8", "--fallback-precision", "bfloat16", "--min-agreement", "100",
                   "--no-verify", "--json")
    assert "retracing" not in proc.stderr  # one trace per block is the plan, not a fault
    result = json.loads(proc.stdout)
    mixed = result["mixed_precision"]
    assert mixed["precision"] == "bfloat16" and mixed["of"] == 5  # four units and the ASPP
    assert len(mixed["blocks"]) == 5 and mixed["steps"][-1]["float"] == mixed["blocks"]
    assert "blocks kept in bfloat16 (" in ExportResult(**result).summary()
    meta = json.loads((Path(result["path"]) / METADATA_FILE).read_text())
    assert meta["mixed_precision"]["precision"] == "bfloat16"
    loaded = tf.saved_model.load(result["path"])
    dtypes = {v.name: v.dtype for v in loaded.model.variables_list}
    for block in mixed["blocks"]:
        if "unit_" in block:
            assert dtypes[f"{block}/conv2/weights:0"] == tf.bfloat16
    # the other convolutions kept out of int8 compute in it too, but for the logits
    assert dtypes["small_resnet_v2/conv1/weights:0"] == tf.bfloat16
    assert dtypes["DeepLab_v3/ASPP_layer/conv_1x1_output/weights:0"] == tf.bfloat16
    assert dtypes["DeepLab_v3/logits/weights:0"] == tf.float32
    # bfloat16 blocks are an int8 export's only
    proc = run_cli("export", str(small_checkpoint), "-o", str(tmp_path / "f"),
                   "--fallback-precision", "bfloat16", check=False)
    assert proc.returncode == 2 and "only an int8 export" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "f").exists()


def test_embedded_server_serves_int8_export_to_unchanged_clients(int8_demo, photographs,
                                                                 tmp_path):
    """The seed's float request and an encoded-image request over gRPC to an int8
    version: the answers of the SavedModel in-process."""
    import grpc
    from servers import ServerProcess
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from tfdeploy.tfs.requests import images_request

    image = np.asarray(Image.open(ROOT / "examples" / "scene_2.jpg").convert("RGB"))
    h, w = image.shape[:2]
    loaded = tf.saved_model.load(int8_demo["path"])
    expected = loaded.signatures["predict_images"](
        images=tf.constant(image[None].astype(np.float32)), height=tf.constant(h),
        width=tf.constant(w))["segmentation_map"].numpy()[0]
    assert len(np.unique(expected)) > 1
    srv = ServerProcess("--model_name=deeplab",
                        f"--model_base_path={Path(int8_demo['path']).parent}", log_dir=tmp_path)
    try:
        srv.wait_available(1)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(srv.grpc_target))
        out = stub.Predict(images_request("deeplab", image), 60.0).outputs["segmentation_map"]
        np.testing.assert_array_equal(np.array(out.int64_val).reshape(h, w), expected)
        encoded = predict_pb2.PredictRequest()
        encoded.model_spec.name = "deeplab"
        encoded.inputs["image_bytes"].CopyFrom(
            tf.make_tensor_proto([(ROOT / "examples" / "scene_2.jpg").read_bytes()]))
        mask = stub.Predict(encoded, 60.0).outputs["segmentation_map"]
        decoded = loaded.signatures["serving_default"](image_bytes=tf.constant(
            [(ROOT / "examples" / "scene_2.jpg").read_bytes()]))["segmentation_map"].numpy()
        np.testing.assert_array_equal(tf.make_ndarray(mask), decoded)
    finally:
        assert srv.stop() == 0


#: Real photographs scikit-image ships besides the held-out PHOTOGRAPHS: calibration
#: images that look like photographs without being the ones the agreement is judged on.
CALIBRATION_PHOTOGRAPHS = ("immunohistochemistry", "hubble_deep_field", "retina", "camera")


@pytest.fixture(scope="module")
def calibration_photographs(tmp_path_factory) -> Path:
    from skimage import data

    folder = tmp_path_factory.mktemp("calibration")
    for name in CALIBRATION_PHOTOGRAPHS:
        Image.fromarray(getattr(data, name)()).convert("RGB").save(folder / f"{name}.png")
    Image.fromarray(data.stereo_motorcycle()[0]).save(folder / "motorcycle.png")
    return folder


def test_int8_mixed_precision_reaches_99_percent_on_held_out_photographs(
        tmp_path, photographs, calibration_photographs):
    """Calibrated on other photographs (never the four judged), the sensitivity pass keeps
    the blocks whose 8-bit activations cost the most agreement in float32 until every
    calibration image agrees at the default 99%; the held-out photographs then agree on
    >= 99% of their pixels too (all-int8: ~97%).  The export says which blocks, and the
    blocks it names are float32 in the SavedModel."""
    proc = run_cli("export", "-o", str(tmp_path / "m"), "--precision", "int8", "--probe",
                   str(photographs), "--calibration", str(calibration_photographs), "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    images = {Path(i["name"]).stem: i for i in result["agreement"]["images"]}
    for name in PHOTOGRAPHS:
        assert not images[name]["calibration"]
        assert images[name]["pixel_agreement"] >= 0.99, (name, images[name])
    mixed = result["mixed_precision"]
    assert mixed["of"] == 10 and mixed["target"] == 0.99  # nine units and the ASPP
    assert 0 < len(mixed["blocks"]) < mixed["of"]  # some blocks stay int8
    assert mixed["steps"][0]["float"] == [] and mixed["steps"][0]["worst_agreement"] < 0.99
    assert mixed["steps"][-1]["float"] == mixed["blocks"]
    assert mixed["steps"][-1]["worst_agreement"] >= 0.99
    meta = json.loads((Path(result["path"]) / METADATA_FILE).read_text())
    assert meta["mixed_precision"] == mixed
    # the chosen blocks' convolutions are float32 variables, the others int8 kernels
    loaded = tf.saved_model.load(result["path"])
    names = {v.name for v in loaded.model.variables_list}
    # the default --fallback-precision: bfloat16 where this CPU has native kernels
    assert mixed["precision"] == ("bfloat16" if cpu_runs_fast("bfloat16", cpu_flags())
                                  else "float32")
    dtypes = {v.name: v.dtype for v in loaded.model.variables_list}
    for block in mixed["blocks"]:
        if "unit_" in block:
            assert dtypes[f"{block}/conv2/weights:0"] == mixed["precision"]
    # so do the first convolution and the ASPP's projection (never int8)
    assert dtypes["demo_resnet_v2/conv1/weights:0"] == mixed["precision"]
    assert dtypes["DeepLab_v3/ASPP_layer/conv_1x1_output/weights:0"] == mixed["precision"]
    int8_units = [u for u in ("block1/unit_1", "block2/unit_1", "block2/unit_2",
                              "block3/unit_1", "block3/unit_2", "block3/unit_3",
                              "block4/unit_1", "block4/unit_2", "block4/unit_3")
                  if f"demo_resnet_v2/{u}/bottleneck_v2" not in mixed["blocks"]]
    assert int8_units and not [n for n in names if f"{int8_units[0]}/bottleneck_v2/conv2" in n]
    assert f"{len(mixed['blocks'])} of 10 blocks kept in {mixed['precision']} (" in ExportResult(
        **result).summary()


#: A Python with TensorFlow 2.12 (oneDNN v2.7), made by ``make test`` (.venv-tf2.12;
#: its stamp is written once TensorFlow is installed: a half-made venv has none).
OLD_TENSORFLOW = ROOT / ".venv-tf2.12" / "bin" / "python"
OLD_TENSORFLOW_READY = ROOT / ".venv-tf2.12" / ".installed"


def _maps_in(python: Path | str, export: Path, images: Path, out: Path) -> dict:
    subprocess.run([str(python), str(ROOT / "tools" / "run_in_tensorflow.py"), str(export),
                    str(images), str(out)], check=True, capture_output=True, timeout=900)
    with np.load(out) as maps:
        return {name: maps[name] for name in maps.files}


@pytest.mark.skipif(not OLD_TENSORFLOW_READY.exists(),
                    reason="no TensorFlow 2.12 venv (.venv-tf2.12; make test creates it)")
def test_exports_compute_the_same_masks_in_tensorflow_2_12(int8_demo, demo_base,
                                                           photographs, tmp_path):
    """Older TF Serving builds carry TensorFlow's oneDNN v2, whose int8 kernels scale a
    qint32 output by each channel's declared filter range where v3 (TensorFlow 2.21,
    here) uses the largest channel's: the int8 graph declares one range for every channel
    and multiplies each channel's scale in afterwards, so both must compute the same.
    The float32 and int8 (``--int8-kernels portable``; the default fused kernels are not
    in 2.12, which must refuse that graph by name) exports of the demo checkpoint,
    written here, run in TensorFlow
    2.12 (oneDNN v2.7) and here on the photographs and the demo images: float32 masks
    are the same, and int8 masks agree with the float32 ones equally well in both (they
    differ only on near-tied pixels: requantization rounds differently; measured within
    0.05 points of each other; a wrong channel scale would cost tens of points)."""
    images = {p.stem: np.asarray(Image.open(p).convert("RGB"), np.float32)
              for p in [*sorted(photographs.glob("*.png")),
                        *sorted((ROOT / "examples").glob("*.jpg"))]}
    np.savez(tmp_path / "images.npz", **images)
    # the default (fused) int8 kernels are not in 2.12: the server refuses the graph,
    # naming the op, as the export's warning says it would
    refused = subprocess.run(
        [str(OLD_TENSORFLOW), str(ROOT / "tools" / "run_in_tensorflow.py"), int8_demo["path"],
         str(tmp_path / "images.npz"), str(tmp_path / "refused.npz")],
        capture_output=True, text=True, timeout=900)
    assert refused.returncode != 0
    assert "Op type not registered '_QuantizedMatMul'" in refused.stderr
    # --int8-kernels portable, the same calibration: runs there
    portable = json.loads(run_cli(
        "export", "-o", str(tmp_path / "portable"), "--precision", "int8", "--int8-kernels",
        "portable", "--probe", str(photographs), "--calibration", str(photographs),
        "--min-agreement", "95", "--no-warmup", "--json").stdout)
    assert portable["int8_kernels"] == "portable"
    assert portable["servers"] == INT8_SERVERS["portable"] and "2.17" not in portable["servers"]
    masks = {}
    for name, export in (("float32", demo_base / "1"), ("int8", Path(portable["path"]))):
        for where, python in (("2.12", OLD_TENSORFLOW), ("here", sys.executable)):
            maps = _maps_in(python, export, tmp_path / "images.npz", tmp_path / "out.npz")
            version, onednn = str(maps.pop("tf_version")), str(maps.pop("onednn"))
            if where == "2.12":
                assert version == "2.12.0" and onednn.startswith("v2."), (version, onednn)
            else:
                assert onednn.startswith("v3."), onednn
            assert sorted(maps) == sorted(images)
            masks[name, where] = maps
    for image, pixels in images.items():
        reference = masks["float32", "here"][image]
        assert reference.shape == pixels.shape[:2]

        def agreement(key, image=image, reference=reference) -> float:
            return float(np.mean(masks[key][image] == reference))

        assert agreement(("float32", "2.12")) >= 0.9999, image
        old, new = agreement(("int8", "2.12")), agreement(("int8", "here"))
        assert new >= 0.97 and abs(old - new) <= 0.005, (image, old, new)


@pytest.mark.parametrize("stride,rate,pad", [(1, 1, False), (2, 1, True), (1, 2, False)])
def test_fused_quantized_conv2d_computes_what_the_public_ops_compute(stride, rate, pad):
    """The int8 export's convolutions (``_FusedQuantizedConv2D`` over a variable's filter)
    give what ``QuantizedConv2DWithBias[AndReluAndRequantize]`` give over a constant one,
    to the bit: requantized and int32 outputs, strided with explicit padding, dilated."""
    rng = np.random.default_rng(0)
    x_u8 = rng.integers(0, 256, (1, 9, 11, 16)).astype(np.uint8)
    w = rng.integers(-127, 128, (3, 3, 16, 8)).astype(np.int8)
    wmax = rng.uniform(0.5, 2.0, 8).astype(np.float32)
    bias = rng.normal(size=8).astype(np.float32)
    variable = tf.Variable(w)
    explicit = [0, 0, 1, 1, 1, 1, 0, 0] if pad else []

    @tf.function  # in a graph, where the public ops' filter is a constant node
    def both():
        filt = tf.bitcast(variable, tf.qint8)
        conv = dict(input=tf.bitcast(tf.constant(x_u8), tf.quint8), min_input=0.0,
                    max_input=4.0, strides=[1, stride, stride, 1],
                    padding="VALID" if pad else "SAME", dilations=[1, rate, rate, 1],
                    padding_list=explicit)
        requant = dict(bias=tf.constant(bias), min_filter=tf.constant(-wmax),
                       max_filter=tf.constant(wmax), min_freezed_output=0.0,
                       max_freezed_output=6.0, **conv)
        raw = dict(bias=tf.constant(bias), min_filter=-127.0, max_filter=127.0, **conv)
        return (tf.bitcast(tf.raw_ops.QuantizedConv2DWithBiasAndReluAndRequantize(
                    filter=tf.constant(w, tf.qint8), out_type=tf.quint8, **requant).output,
                    tf.uint8),
                tf.bitcast(fused_quantized_conv2d(filter=filt, **requant), tf.uint8),
                tf.bitcast(tf.raw_ops.QuantizedConv2DWithBias(
                    filter=tf.constant(w, tf.qint8), out_type=tf.qint32, **raw).output,
                    tf.int32),
                tf.bitcast(fused_quantized_conv2d(filter=filt, **raw), tf.int32))

    public8, ours8, public32, ours32 = (t.numpy() for t in both())
    assert public8.shape == ours8.shape and public8.any()
    np.testing.assert_array_equal(ours8, public8)
    np.testing.assert_array_equal(ours32, public32)
