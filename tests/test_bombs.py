"""Bounded work per request: the exported signatures refuse an image above the pixel
limit before decoding it (size read from the JPEG/PNG/GIF/BMP/WebP header inside the
graph), so a few-KB decompression bomb costs a served model nothing, under any server."""

from __future__ import annotations

import base64
import io

import numpy as np
import psutil
import pytest
import tensorflow as tf
from conftest import export_json
from PIL import Image
from servers import ServerProcess, http

from tfdeploy.client.base import ClientError
from tfdeploy.client.pool import connect
from tfdeploy.export.config import DEFAULT_MAX_PIXELS, parse_max_pixels
from tfdeploy.export.signatures import header_size


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def bomb(side: int = 8000) -> bytes:
    """A single-colour PNG of side x side pixels: ~60 KB on the wire, 192 MB decoded."""
    return encode(Image.new("L", (side, side)), "PNG", optimize=True)


@pytest.mark.parametrize("fmt, kw", [("PNG", {}), ("JPEG", {}), ("GIF", {}), ("BMP", {}),
                                     ("WEBP", {"lossless": False}),
                                     ("WEBP", {"lossless": True})])
def test_header_size_reads_every_format(fmt, kw):
    data = encode(Image.new("RGB", (401, 299), (9, 99, 199)), fmt, **kw)
    assert header_size(tf.constant(data)).numpy().tolist() == [299, 401]


def test_header_size_of_odd_inputs():
    frames = [Image.new("RGBA", (333, 222)), Image.new("RGBA", (333, 222), (1, 2, 3, 4))]
    animated = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:])  # VP8X
    assert header_size(tf.constant(animated)).numpy().tolist() == [222, 333]
    for data in (b"", b"\x89PNG", b"not an image at all"):  # decoding rejects these later
        assert header_size(tf.constant(data)).numpy().tolist() == [0, 0]


def test_parse_max_pixels():
    assert parse_max_pixels("2048x2048") == DEFAULT_MAX_PIXELS == 2048 * 2048
    assert parse_max_pixels("4096x4096") == 4096 * 4096
    assert parse_max_pixels("1000") == 1000 and parse_max_pixels(7) == 7
    for bad in ("3x", "axb", "0", "1x2x3", "-5"):
        with pytest.raises(ValueError):
            parse_max_pixels(bad)


@pytest.fixture(scope="module")
def limited(small_checkpoint, tmp_path_factory):
    """A small model exported with a 300x300 limit, served by the embedded server."""
    base = tmp_path_factory.mktemp("limited") / "m"
    out = export_json(str(small_checkpoint), "-o", str(base), "--max-pixels", "300x300",
                      "--no-verify")
    assert out["max_pixels"] == 90000
    srv = ServerProcess("--model_name=m", f"--model_base_path={base}",
                        log_dir=tmp_path_factory.mktemp("logs"))
    srv.wait_available(1, model="m")
    yield srv
    srv.stop()


def test_limit_is_enforced_by_the_served_graph(limited):
    pool = connect(limited.grpc_target, "grpc", retries=0)
    ok = encode(Image.new("RGB", (300, 300), (200, 10, 10)), "JPEG")
    assert pool.predict_png("m", ok)[:4] == b"\x89PNG"
    for fmt in ("JPEG", "PNG", "GIF", "BMP", "WEBP"):
        big = encode(Image.new("RGB", (301, 300), (200, 10, 10)), fmt)
        with pytest.raises(ClientError) as info:
            pool.predict_png("m", big)
        assert info.value.code == "INVALID_ARGUMENT"
        assert "limit of 300x300" in info.value.message and "--max-pixels" in info.value.message
    with pytest.raises(ClientError, match="limit of 300x300"):  # the seed's float signature
        pool.predict("m", "predict_images", {
            "images": np.zeros((1, 400, 300, 3), np.float32),
            "height": np.array([400], np.int32), "width": np.array([300], np.int32)})
    status, body = http("POST", f"{limited.rest}/v1/models/m:predict", {
        "signature_name": "serving_default",
        "instances": [{"b64": base64.b64encode(bomb(2000)).decode()}]})
    assert status == 400 and "limit of 300x300" in body["error"]


def test_bomb_under_the_default_limit_costs_no_memory(demo_base, tmp_path):
    """The demo model (default 2048x2048 limit): an 8000x8000 PNG bomb is refused, and
    the server's memory does not grow by the 192 MB it would decode to."""
    srv = ServerProcess("--model_name=deeplab", f"--model_base_path={demo_base}",
                        log_dir=tmp_path)
    try:
        srv.wait_available(1)
        process = psutil.Process(srv.proc.pid)
        before = process.memory_info().rss
        pool = connect(srv.grpc_target, "grpc", retries=0)
        data = bomb(8000)
        assert len(data) < 100_000
        for _ in range(3):
            with pytest.raises(ClientError) as info:
                pool.predict_png("deeplab", data)
            assert info.value.code == "INVALID_ARGUMENT"
            assert "limit of 2048x2048" in info.value.message
        growth = process.memory_info().rss - before
        assert growth < 100 << 20, f"server grew by {growth >> 20} MB"
        # and it still serves
        ok = encode(Image.new("RGB", (64, 48), (200, 10, 10)), "PNG")
        assert pool.predict_png("deeplab", ok)[:4] == b"\x89PNG"
    finally:
        srv.stop()
