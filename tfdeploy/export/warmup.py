"""Warmup records (``assets.extra/tf_serving_warmup_requests``).

TF Serving replays these PredictionLog records when it loads a version, so the first
real request does not pay for graph tracing and memory allocation.  We write one request
per signature, shaped like real traffic.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

from tfdeploy.tfs import protos
from tfdeploy.tfs.names import DEFAULT_MODEL_NAME
from tfdeploy.tfs.requests import encoded_image_request, images_request
from tfdeploy.tfs.versions import WARMUP_FILE


def probe_image(height: int = 97, width: int = 75, seed: int = 7) -> np.ndarray:
    """A deterministic RGB uint8 test image: gradients, blocks and noise, odd-sized so
    padding and resizing paths are exercised."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1),
                    (x + y) % 256], axis=-1).astype(np.int32)
    img[height // 4: height // 2, width // 4: width // 2] = (200, 30, 30)
    img += rng.integers(-20, 20, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def encode_png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def requests(model_name: str = DEFAULT_MODEL_NAME, size: tuple[int, int] = (128, 128)) -> list:
    """One PredictRequest per signature."""
    image = probe_image(*size)
    return [images_request(model_name, image),
            encoded_image_request(model_name, [encode_png(image)], outputs=())]


def write(version_dir: Path, model_name: str = DEFAULT_MODEL_NAME) -> int:
    """Write the warmup file into ``version_dir``; returns the number of records."""
    log_pb2 = protos.module("tensorflow_serving.apis.prediction_log_pb2")
    path = version_dir / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    reqs = requests(model_name)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for req in reqs:
            log = log_pb2.PredictionLog(predict_log=log_pb2.PredictLog(request=req))
            writer.write(log.SerializeToString())
    return len(reqs)
