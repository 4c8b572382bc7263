"""`tfdeploy predict` / `bench` against a real embedded server on 127.0.0.1."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT, run_cli
from PIL import Image

EXAMPLES = sorted((ROOT / "examples").glob("*.jpg"))


@pytest.fixture(scope="module")
def in_process(demo_base):
    return tf.saved_model.load(str(demo_base / "1"))


@pytest.fixture(scope="module")
def server(demo_server):
    return demo_server


def expected_mask(in_process, rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    return in_process.signatures["predict_images"](
        images=tf.constant(rgb[None].astype(np.float32)), height=tf.constant(h),
        width=tf.constant(w))["segmentation_map"].numpy()[0]


def predict(server, *args, check=True, transport="grpc"):
    endpoint = server.grpc_target if transport == "grpc" else f"127.0.0.1:{server.rest_port}"
    return run_cli("predict", "--server", endpoint, "--transport", transport, *args,
                   check=check)


@pytest.mark.parametrize("transport", ["grpc", "rest"])
@pytest.mark.parametrize("signature", ["serving_default", "predict_images"])
def test_masks_equal_in_process(server, in_process, tmp_path, transport, signature):
    out = tmp_path / "masks"
    proc = predict(server, *map(str, EXAMPLES[:2]), "--signature", signature, "-o", str(out),
                   "--json", transport=transport)
    report = json.loads(proc.stdout)
    assert report["summary"]["ok"] == 2 and report["summary"]["signature"] == signature
    for path, result in zip(EXAMPLES[:2], report["results"], strict=True):
        if signature == "serving_default":  # the file's own bytes, decoded by the model
            expected = in_process.signatures["serving_default"](
                image_bytes=tf.constant([path.read_bytes()]))["segmentation_map"].numpy()[0]
        else:  # pixels decoded by the client
            expected = expected_mask(in_process, np.asarray(Image.open(path).convert("RGB")))
        mask = Image.open(out / f"{path.stem}.png")
        assert mask.mode == "P"
        np.testing.assert_array_equal(np.asarray(mask), expected)
        counts = {str(k): int(v) for k, v in zip(*np.unique(expected, return_counts=True),
                                                  strict=True)}
        assert result["classes"] == counts


def test_default_signature_is_encoded_and_overlay(server, tmp_path):
    out = tmp_path / "out"
    proc = predict(server, str(EXAMPLES[0]), "-o", str(out), "--overlay")
    assert "1 images: 1 ok, 0 failed" in proc.stdout
    assert "serving_default" in proc.stderr
    overlay = Image.open(out / f"{EXAMPLES[0].stem}.overlay.jpg")
    assert overlay.size == Image.open(EXAMPLES[0]).size


def test_folder_of_200_images_concurrently(server, in_process, tmp_path):
    from tfdeploy.demo.scenes import batch

    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    images, _ = batch(np.random.default_rng(77), 200, 48, 64)
    for i, image in enumerate(images):
        target = folder / ("sub" if i % 2 else "") / f"img_{i:03d}.png"
        Image.fromarray(image).save(target)
    (folder / "notes.txt").write_text("not an image: skipped by suffix")
    out = tmp_path / "masks"
    proc = predict(server, str(folder), "-j", "4", "-o", str(out), "--json")
    report = json.loads(proc.stdout)
    assert report["summary"]["images"] == 200 and report["summary"]["failed"] == 0
    order = [r["path"] for r in report["results"]]
    assert order == [str(p) for p in sorted(folder.rglob("*.png"))]  # input order kept
    expected = in_process.signatures["serving_default"](
        image_bytes=tf.constant([_png(im) for im in images]))["segmentation_map"].numpy()
    for i in range(200):
        written = out / ("sub" if i % 2 else "") / f"img_{i:03d}.png"
        np.testing.assert_array_equal(np.asarray(Image.open(written)), expected[i])
    assert not list(out.rglob("*.tmp"))


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def test_bad_files_are_reported_and_skipped(server, tmp_path):
    good = tmp_path / "good.jpg"
    good.write_bytes(EXAMPLES[0].read_bytes())
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(EXAMPLES[1].read_bytes()[:2000])
    text = tmp_path / "text.png"
    text.write_text("definitely not a PNG")
    bomb = tmp_path / "bomb.png"
    Image.new("1", (10_000, 10_000)).save(bomb)  # 100 Mpixel, a few KB on disk
    missing = tmp_path / "missing.jpg"
    out = tmp_path / "masks"
    proc = predict(server, str(good), str(truncated), str(text), str(bomb), str(missing),
                   "-o", str(out), check=False)
    assert proc.returncode == 1
    lines = proc.stderr
    assert "truncated.jpg: unreadable image" in lines
    assert "text.png: not an image" in lines
    assert "bomb.png:" in lines and "pixel" in lines
    assert "missing.jpg: no such file" in lines
    assert "Traceback" not in lines
    assert sorted(p.name for p in out.iterdir()) == ["good.png"]
    # when every image fails there is no rate to report
    proc = predict(server, str(text), "-o", str(out), check=False)
    assert proc.returncode == 1 and "0 ok, 1 failed" in proc.stdout
    assert "img/s" not in proc.stdout


def test_image_modes_and_orientation(server, in_process, tmp_path):
    rgb = np.asarray(Image.open(EXAMPLES[2]).convert("RGB"))[:60, :90]
    files = {}
    files["grey.png"] = Image.fromarray(rgb).convert("L")
    files["rgba.png"] = Image.fromarray(rgb).convert("RGBA")
    files["cmyk.jpg"] = Image.fromarray(rgb).convert("CMYK")
    sixteen = (np.asarray(Image.fromarray(rgb).convert("L"), np.uint16) * 257)
    files["sixteen.png"] = Image.fromarray(sixteen)  # uint16 -> mode I;16
    for name, img in files.items():
        img.save(tmp_path / name)
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # camera held sideways: display rotated 90 degrees clockwise
    Image.fromarray(rgb).save(rotated, exif=exif, quality=95)
    out = tmp_path / "masks"
    report = json.loads(predict(server, str(tmp_path), "-o", str(out), "--json").stdout)
    assert report["summary"]["failed"] == 0
    by_name = {os.path.basename(r["path"]): r for r in report["results"]}
    assert (by_name["rotated.jpg"]["height"], by_name["rotated.jpg"]["width"]) == (90, 60)
    for name in ("grey.png", "rgba.png", "cmyk.jpg", "sixteen.png"):
        assert (by_name[name]["height"], by_name[name]["width"]) == (60, 90), name
    grey = np.asarray(files["grey.png"].convert("RGB"))
    np.testing.assert_array_equal(np.asarray(Image.open(out / "grey.png")),
                                  expected_mask(in_process, grey))
    np.testing.assert_array_equal(np.asarray(Image.open(out / "sixteen.png")),
                                  expected_mask(in_process, grey))
    upright = np.asarray(Image.open(rotated).transpose(Image.Transpose.ROTATE_270)
                         .convert("RGB"))
    np.testing.assert_array_equal(np.asarray(Image.open(out / "rotated.png")),
                                  expected_mask(in_process, upright))


def test_max_side_brings_mask_back_to_original_size(server, tmp_path):
    out = tmp_path / "masks"
    report = json.loads(predict(server, str(EXAMPLES[0]), "--max-side", "100", "-o", str(out),
                                "--json").stdout)
    (result,) = report["results"]
    w, h = Image.open(EXAMPLES[0]).size
    assert Image.open(out / f"{EXAMPLES[0].stem}.png").size == (w, h)
    assert (result["height"], result["width"]) == (h, w)


def test_client_never_imports_tensorflow(server, tmp_path):
    code = (
        "import json, sys\n"
        "from tfdeploy.cli import main\n"
        "try:\n"
        f"    main(['predict', '--server', '{server.grpc_target}', '-o', '{tmp_path}',"
        f" '{EXAMPLES[0]}'])\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "print('numpy' in sys.modules)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('tensorflow'))))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    *_, numpy_loaded, last = proc.stdout.strip().splitlines()
    modules = json.loads(last)
    assert numpy_loaded == "False"  # the encoded-image path needs no numpy either
    assert (tmp_path / f"{EXAMPLES[0].stem}.png").is_file()
    assert "tensorflow" not in modules
    assert any(m.endswith("_pb2") for m in modules)
    protos = [m for m in modules if m.endswith(("_pb2", "_pb2_grpc"))]
    for name in modules:
        # only generated protobuf modules, and the packages on the way to them
        assert name in protos or any(p.startswith(name + ".") for p in protos), name
    assert not [m for m in modules if m.startswith("tensorflow.python")]


def test_unreachable_server_and_bad_model(server, tmp_path):
    proc = run_cli("predict", "--server", "127.0.0.1:1", str(EXAMPLES[0]), check=False,
                   timeout=120)
    assert proc.returncode == 2 and "UNAVAILABLE" in proc.stderr
    assert "tfdeploy serve" in proc.stderr  # says how to get a server
    # a missing input is reported as such before any connection is tried
    proc = run_cli("predict", "--server", "127.0.0.1:1", str(tmp_path / "nothere.jpg"),
                   check=False)
    assert proc.returncode == 2 and "no such file" in proc.stderr
    assert "UNAVAILABLE" not in proc.stderr and "nothere.jpg" in proc.stderr
    # gRPC sent to the REST port, and REST to the gRPC port: told which transport to use
    proc = run_cli("predict", "--server", f"127.0.0.1:{server.rest_port}", str(EXAMPLES[0]),
                   check=False, timeout=120)
    assert proc.returncode == 2 and "--transport rest" in proc.stderr, proc.stderr
    proc = run_cli("predict", "--transport", "rest", "--server", server.grpc_target,
                   str(EXAMPLES[0]), check=False, timeout=120)
    assert proc.returncode == 2 and "--transport grpc" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    proc = predict(server, str(EXAMPLES[0]), "-m", "nosuch", check=False)
    assert proc.returncode == 2 and "NOT_FOUND" in proc.stderr
    proc = predict(server, str(tmp_path / "empty-dir-*"), check=False)
    assert proc.returncode == 2 and "no images found" in proc.stderr


def test_bench_reports_levels(server):
    proc = run_cli("bench", "--server", server.grpc_target, "-c", "1,2", "-n", "6", "--json")
    report = json.loads(proc.stdout)
    assert [lv["concurrency"] for lv in report["levels"]] == [1, 2]
    for level in report["levels"]:
        assert level["requests"] == 6 and level["errors"] == 0
        assert level["p50_ms"] > 0 and level["p99_ms"] >= level["p50_ms"]
        assert level["throughput"] > 0
    text = run_cli("bench", "--server", server.grpc_target, "-c", "1", "-n", "2",
                   "--signature", "predict_images").stdout
    assert "p50 ms" in text and "predict_images" in text


def test_bench_like_perf_analyzer(server, tmp_path):
    """Warm-up, stabilised windows, a concurrency range and request rates over a folder of
    images; CSV and JSON carry the same levels."""
    import csv

    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in EXAMPLES[:3]:
        (folder / p.name).write_bytes(p.read_bytes())
    out_csv = tmp_path / "bench.csv"
    proc = run_cli("bench", str(folder), "--server", server.grpc_target,
                   "--concurrency-range", "1:2", "--warmup", "2",
                   "--measurement-interval", "0.3", "--max-trials", "3",
                   "--csv", str(out_csv), "--json")
    report = json.loads(proc.stdout)
    assert report["images"] == 3
    levels = report["levels"]
    assert [lv["concurrency"] for lv in levels] == [1, 2]
    for level in levels:
        assert 1 <= level["windows"] <= 3 and isinstance(level["stable"], bool)
        assert level["errors"] == 0 and level["requests"] > 0
        assert level["p50_ms"] <= level["p95_ms"] <= level["p99_ms"]
        assert level["avg_ms"] > 0 and level["throughput"] > 0
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["concurrency"] for r in rows] == ["1", "2"]
    assert [int(r["requests"]) for r in rows] == [lv["requests"] for lv in levels]
    # open loop at fixed rates; the table says whether each level was stable
    proc = run_cli("bench", str(EXAMPLES[0]), "--server", server.grpc_target,
                   "--request-rate", "5,10", "--warmup", "1", "--measurement-interval",
                   "0.4", "--max-trials", "3")
    rows = [line for line in proc.stdout.splitlines() if line.strip().endswith(
        ("yes", "windows)"))]
    assert [r.split()[0] for r in rows] == ["5/s", "10/s"], proc.stdout
    # a missing image is an error before any request, and both kinds of level are refused
    proc = run_cli("bench", str(tmp_path / "nope"), "--server", "127.0.0.1:1", check=False)
    assert proc.returncode == 2 and "no such file" in proc.stderr
    proc = run_cli("bench", "-c", "1", "--request-rate", "5", check=False)
    assert proc.returncode == 2 and "not both" in proc.stderr


def test_bench_measurement_units():
    from tfdeploy.client.bench import is_stable, parse_levels, parse_rates

    assert parse_levels("1,4,8") == [1, 4, 8]
    assert parse_levels("1:4") == [1, 2, 3, 4] and parse_levels("2:8:3") == [2, 5, 8]
    assert parse_rates("10:30:10") == [10.0, 20.0, 30.0]
    for bad in ("0", "4:1", "a,b", "1:2:3:4", "1:4:0"):
        with pytest.raises(ValueError):
            parse_levels(bad)
    steady = [{"throughput": 100, "avg_ms": 10}] * 3
    assert is_stable(steady, 10) and not is_stable(steady[:2], 10)
    noisy = [*steady[:2], {"throughput": 150, "avg_ms": 10}]
    assert not is_stable(noisy, 10) and is_stable(noisy, 30)
    assert not is_stable([{"throughput": 0, "avg_ms": None}] * 3, 10)


def test_grpc_async_calls(server, in_process):
    """The transport's asynchronous gRPC path: several requests in flight at once."""
    from tfdeploy.client.base import ClientError
    from tfdeploy.client.pool import connect

    transport = connect(server.grpc_target, "grpc")
    images = [np.asarray(Image.open(p).convert("RGB"))[:64, :64] for p in EXAMPLES]
    futures = [transport.predict_async(
        "deeplab", "predict_images",
        {"images": im[None].astype(np.float32), "height": np.array([64], np.int32),
         "width": np.array([64], np.int32)}) for im in images]
    for im, fut in zip(images, futures, strict=True):
        mask = fut.result(timeout=60)["segmentation_map"][0]
        np.testing.assert_array_equal(mask, expected_mask(in_process, im))
    bad = transport.predict_async("deeplab", "predict_images", {"images": images[0][None]})
    with pytest.raises(ClientError) as info:
        bad.result(timeout=60)
    assert info.value.code == "INVALID_ARGUMENT"


def test_exact_files_are_sent_unchanged(tmp_path):
    """A plain RGB JPEG/PNG goes to the server byte for byte (smallest request, the model's
    own decoder); anything converted, rotated or resized is sent as a lossless PNG."""
    from tfdeploy.client import images

    jpg = EXAMPLES[0]
    loaded = images.load(jpg)
    assert loaded.encoded == jpg.read_bytes()
    assert loaded.original_size == loaded.rgb.shape[:2]
    exif = Image.Exif()
    exif[0x0112] = 8
    rotated = tmp_path / "rotated.jpg"
    Image.open(jpg).save(rotated, exif=exif)
    turned = images.load(rotated)
    assert turned.encoded[:8] == b"\x89PNG\r\n\x1a\n"
    assert turned.rgb.shape[:2] == loaded.rgb.shape[1::-1]
    small = images.load(jpg, max_side=100)
    assert max(small.rgb.shape[:2]) == 100 and small.original_size == loaded.original_size
    assert small.encoded[:4] == b"\x89PNG"


def test_signature_choice():
    from tfdeploy.client.predict import PredictError, choose_signature
    from tfdeploy.tfs.saved_model import Signature

    seed = {"predict_images": Signature({"images": ("float", [1, None, None, 3])},
                                        {"segmentation_map": ("int64", [1, None, None])})}
    ours = {**seed, "serving_default": Signature({"image_bytes": ("string", [None])},
                                                 {"mask_png": ("string", [None])})}
    other = {**seed, "serving_default": Signature({"image_bytes": ("string", [None])},
                                                  {"scores": ("float", [None])})}
    assert choose_signature(ours, None) == "serving_default"
    assert choose_signature(seed, None) == "predict_images"  # the seed's own exports
    assert choose_signature(other, None) == "predict_images"  # no mask_png to save
    assert choose_signature(ours, "predict_images") == "predict_images"
    with pytest.raises(PredictError, match="no signature 'x'"):
        choose_signature(ours, "x")
    with pytest.raises(PredictError, match="neither"):
        choose_signature({"classify": other["serving_default"]}, None)
