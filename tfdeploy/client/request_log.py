"""Reading request logs: the PredictionLog TFRecord files the embedded server writes for a
model's ``logging_config`` (and any warmup file), without TensorFlow.

``entries`` lists what was logged; ``export`` writes each logged image (the encoded bytes
of a ``serving_default`` request as they came, or a ``predict_images`` uint8 array as PNG)
and, where the response was logged, its mask (palette PNG) and an overlay, so a sample of
real traffic can be looked at, given to ``export --probe`` / ``--calibration``, or replayed
with ``bench --from-log``.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from tfdeploy.tfs import protos, tensors, tfrecord
from tfdeploy.tfs.names import IMAGE_BYTES, IMAGES, MASK_PNG, SEGMENTATION_MAP

#: the file name the embedded server gives a log file: PREFIX.<nanoseconds>.tfrecord
LOG_SUFFIX = ".tfrecord"
_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "GIF": ".gif", "BMP": ".bmp", "WEBP": ".webp"}


class LogError(ValueError):
    """A log directory or file that cannot be read (the message says which and why)."""


@dataclass
class Entry:
    """One logged request."""

    file: Path
    index: int  # its position in the file
    time: float  # seconds since the epoch (log_metadata.timestamp_secs)
    kind: str  # predict_log, classify_log, regress_log, multi_inference_log
    model: str
    version: int
    signature: str
    inputs: dict[str, list[int]] = field(default_factory=dict)  # key -> shape
    image_sizes: list[str] = field(default_factory=list)  # "WxH" of each logged image
    has_response: bool = False
    log: object = None  # the PredictionLog

    @property
    def stem(self) -> str:
        return f"{self.file.stem}-{self.index:05d}"

    def to_json(self) -> dict:
        return {"time": datetime.fromtimestamp(self.time, timezone.utc).isoformat(),
                "kind": self.kind, "model": self.model, "version": self.version,
                "signature": self.signature, "inputs": self.inputs,
                "image_sizes": self.image_sizes, "response": self.has_response,
                "file": str(self.file), "index": self.index}


def log_files(path: str | Path) -> list[Path]:
    """The TFRecord files of a log directory (oldest first: the server names them by the
    time they were started), or the one file given."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise LogError(f"no such file or directory: {p}")

    def started(f: Path) -> tuple[str, int]:
        prefix, _, ns = f.stem.rpartition(".")
        return (prefix, int(ns)) if ns.isdigit() else (f.stem, 0)

    return sorted((f for f in p.iterdir() if f.is_file() and f.name.endswith(LOG_SUFFIX)),
                  key=started)


def _images(entry_log, signature: str) -> list[bytes | object]:
    """The images of a Predict request: encoded bytes, or uint8 arrays [H, W, 3]."""
    import numpy as np

    request = entry_log.predict_log.request
    if IMAGE_BYTES in request.inputs:
        return list(tensors.from_proto(request.inputs[IMAGE_BYTES]).ravel())
    if IMAGES in request.inputs:
        array = tensors.from_proto(request.inputs[IMAGES])
        if array.ndim == 4 and array.shape[-1] == 3:
            return [np.clip(a, 0, 255).astype(np.uint8) for a in array]
    return []


def _size(image) -> str:
    from PIL import Image

    if isinstance(image, bytes):
        try:
            with Image.open(io.BytesIO(image)) as img:
                return f"{img.width}x{img.height}"
        except Exception:
            return "?"
    return f"{image.shape[1]}x{image.shape[0]}"


def entries(path: str | Path) -> Iterator[Entry]:
    """Every logged request of a log directory (or file), oldest first; ``LogError`` for
    a file that is not a TFRecord of PredictionLogs."""
    log_pb2 = protos.module("tensorflow_serving.apis.prediction_log_pb2")
    for f in log_files(path):
        try:
            for i, raw in enumerate(tfrecord.read_records(f)):
                entry_log = log_pb2.PredictionLog.FromString(raw)
                yield _entry(f, i, entry_log)
        except LogError:
            raise
        except Exception as exc:  # DecodeError, bad framing
            raise LogError(f"{f}: not a request log ({exc})") from None


def _entry(f: Path, i: int, entry_log) -> Entry:
    kind = entry_log.WhichOneof("log_type") or ""
    spec = entry_log.log_metadata.model_spec
    body = getattr(entry_log, kind) if kind else None
    request = getattr(body, "request", None)
    if request is not None and not spec.name:  # a warmup file: no log_metadata
        spec = request.model_spec
    entry = Entry(f, i, float(entry_log.log_metadata.timestamp_secs), kind, spec.name,
                  spec.version.value, spec.signature_name, log=entry_log)
    if kind == "predict_log":
        entry.inputs = {k: list(tensors.shape_of(v)) for k, v in request.inputs.items()}
        entry.image_sizes = [_size(img) for img in _images(entry_log, spec.signature_name)]
        entry.has_response = bool(body.response.outputs)
    elif body is not None:
        entry.has_response = body.HasField("response")
    return entry


def _masks(entry: Entry) -> list:
    """The logged response's masks as palette images (one per image), or []."""
    from PIL import Image

    from tfdeploy.client.masks import palette_image

    outputs = entry.log.predict_log.response.outputs
    if MASK_PNG in outputs:
        return [Image.open(io.BytesIO(b)) for b in
                tensors.from_proto(outputs[MASK_PNG]).ravel()]
    if SEGMENTATION_MAP in outputs:
        maps = tensors.from_proto(outputs[SEGMENTATION_MAP])
        return [palette_image(m) for m in maps.reshape((-1,) + maps.shape[-2:])]
    return []


def export(path: str | Path, out_dir: str | Path, *, masks: bool = True) -> list[dict]:
    """Write the images of the logged Predict requests to ``out_dir/images`` (named
    ``<log file>-<n>``, plus ``-<k>`` for the k-th image of a batch; encoded images keep
    their bytes and format, arrays become PNG) and, where the response was logged and
    ``masks``, their masks (``masks/<same>.png``, palette) and overlays
    (``overlays/<same>.jpg``): folders apart, so ``images/`` alone is a probe or
    calibration set.  Returns one dict per image
    written (``image``, ``mask``, ``overlay``, ``model``, ``version``, ``signature``)."""
    from PIL import Image

    from tfdeploy.client.masks import overlay, resize_mask, save_atomic

    out = Path(out_dir)
    written = []
    for entry in entries(path):
        if entry.kind != "predict_log":
            continue
        images = _images(entry.log, entry.signature)
        found = _masks(entry) if masks and entry.has_response else []
        for k, image in enumerate(images):
            stem = entry.stem if len(images) == 1 else f"{entry.stem}-{k}"
            if isinstance(image, bytes):
                try:
                    with Image.open(io.BytesIO(image)) as probe:
                        ext = _FORMATS.get(probe.format or "", ".img")
                    picture = Image.open(io.BytesIO(image)).convert("RGB")
                except Exception:
                    continue  # not an image (a logged request the server refused to decode)
                target = out / "images" / f"{stem}{ext}"
                save_atomic(image, target)
            else:
                picture = Image.fromarray(image)
                target = out / "images" / f"{stem}.png"
                save_atomic(picture, target)
            row = {"image": str(target), "model": entry.model, "version": entry.version,
                   "signature": entry.signature, "mask": None, "overlay": None}
            if k < len(found):
                mask = resize_mask(found[k], (picture.height, picture.width))
                save_atomic(mask, out / "masks" / f"{stem}.png")
                save_atomic(overlay(picture, mask), out / "overlays" / f"{stem}.jpg",
                            format="JPEG", quality=90)
                row["mask"] = str(out / "masks" / f"{stem}.png")
                row["overlay"] = str(out / "overlays" / f"{stem}.jpg")
            written.append(row)
    return written
