"""Reading request logs: the PredictionLog TFRecord files the embedded server writes for a
model's ``logging_config`` (and any warmup file), without TensorFlow.

``entries`` lists what was logged; ``export`` writes each logged image (the encoded bytes
of a ``serving_default`` request as they came, or a ``predict_images`` uint8 array as PNG)
and, where the response was logged, its mask (palette PNG) and an overlay, so a sample of
real traffic can be looked at, given to ``export --probe`` / ``--calibration``, or replayed
with ``bench --from-log``.  ``scan`` and ``logged_images`` are the same reading for a
page that browses a log (``tfdeploy ui``): it keeps each record's offset instead of the
record, reads what a file holds before a corrupt or cut record, and says what it could
not read.
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
    log: object = None  # the PredictionLog (None in a ``scan``: ``load`` reads it again)
    offset: int = 0  # where its record starts in ``file``

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
    time they were started), the one file given, or the files of a ``filename_prefix``
    (``PREFIX.<ns>.tfrecord``: the log of one model when several share a directory)."""
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        return sorted((f for f in p.iterdir() if f.is_file() and f.name.endswith(LOG_SUFFIX)),
                      key=_started)
    if p.parent.is_dir() and p.name:
        found = [f for f in p.parent.glob(p.name + ".*" + LOG_SUFFIX)
                 if f.name[len(p.name) + 1:-len(LOG_SUFFIX)].isdigit()]
        if found:
            return sorted(found, key=_started)
    raise LogError(f"no such file or directory: {p}")


def _started(f: Path) -> tuple[str, int]:
    prefix, _, ns = f.stem.rpartition(".")
    return (prefix, int(ns)) if ns.isdigit() else (f.stem, 0)


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
    a file that is not a TFRecord of PredictionLogs.  A record cut short at the end of a
    file (one being written) ends that file."""
    for f in log_files(path):
        try:
            for i, (offset, raw) in enumerate(tfrecord.records_at(f)):
                yield _entry(f, _parse(raw), offset, i)
        except tfrecord.CutShort:
            continue
        except LogError:
            raise
        except Exception as exc:  # DecodeError, bad framing
            raise LogError(f"{f}: not a request log ({exc})") from None


def _parse(raw: bytes):
    log_pb2 = protos.module("tensorflow_serving.apis.prediction_log_pb2")
    return log_pb2.PredictionLog.FromString(raw)


def scan_file(f: Path) -> tuple[list[Entry], str | None]:
    """The requests of one log file, oldest first, without their records (``load`` reads
    one again), and what could not be read, in plain words (None when all could): the
    requests before a corrupt or cut-short record are kept."""
    found: list[Entry] = []
    index = 0
    try:
        for offset, raw in tfrecord.records_at(f):
            try:
                entry = _entry(f, _parse(raw), offset, index)
            except Exception as exc:  # DecodeError: a checked record that is no log
                return found, (f"{f}: record {index + 1} (byte {offset}) is not a "
                               f"PredictionLog ({exc}); {_kept(found)}")
            entry.log = None
            found.append(entry)
            index += 1
    except tfrecord.CutShort as exc:
        return found, f"{exc}; {_kept(found)}"
    except ValueError as exc:
        return found, f"{exc}; {_kept(found)}"
    except OSError as exc:
        return found, f"{f}: cannot read ({exc.strerror or exc}); {_kept(found)}"
    return found, None


def _kept(found: list) -> str:
    return (f"the {len(found)} request(s) before it are shown" if found
            else "no request before it")


def scan(path: str | Path) -> tuple[list[Entry], list[str]]:
    """(every readable request of a log, oldest first; what could not be read).  Unlike
    ``entries``, a bad file does not hide the others, nor the requests before its bad
    record.  ``LogError`` only when ``path`` has no log files at all."""
    found: list[Entry] = []
    problems: list[str] = []
    for f in log_files(path):
        listed, problem = scan_file(f)
        found += listed
        if problem:
            problems.append(problem)
    return found, problems


def load(entry: Entry) -> Entry:
    """``entry`` with its PredictionLog read again from its file (after a ``scan``)."""
    if entry.log is None:
        try:
            entry.log = _parse(tfrecord.record_at(entry.file, entry.offset))
        except (OSError, ValueError) as exc:  # rotated away, or changed under us
            raise LogError(f"{entry.file}: cannot read the request at byte "
                           f"{entry.offset} ({exc})") from None
    return entry


def _entry(f: Path, entry_log, offset: int, i: int) -> Entry:
    kind = entry_log.WhichOneof("log_type") or ""
    spec = entry_log.log_metadata.model_spec
    body = getattr(entry_log, kind) if kind else None
    request = getattr(body, "request", None)
    if request is not None and not spec.name:  # a warmup file: no log_metadata
        spec = request.model_spec
    entry = Entry(f, i, float(entry_log.log_metadata.timestamp_secs),
                  kind, spec.name, spec.version.value, spec.signature_name, log=entry_log,
                  offset=offset)
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


@dataclass
class LoggedImage:
    """One image of a logged request as a page or a folder shows it."""

    picture: object = None  # PIL RGB image, None when the input is not one
    encoded: bytes | None = None  # the bytes as logged (serving_default), else None
    ext: str = ".png"  # the file extension of ``encoded`` (its format)
    mask: object = None  # the logged response's mask (palette), the picture's size
    note: str = ""  # in plain words: why there is no picture, or no mask


def _shape(value) -> str:
    return f"{value.dtype} [{', '.join(map(str, value.shape))}]"


def logged_images(entry: Entry, *, masks: bool = True) -> list[LoggedImage]:
    """The images of a logged request and, where its response was logged (and
    ``masks``), each one's mask from that response: the mask the server answered, never
    a new prediction.  Encoded images (``serving_default``) as they came; pixel arrays
    (``predict_images``: uint8 or float [N, H, W, 3] or [H, W, 3]) as pictures, clipped
    to 0..255; any other input is one LoggedImage without a picture whose ``note`` says
    what the input was."""
    import numpy as np
    from PIL import Image

    from tfdeploy.client.masks import resize_mask

    body = getattr(load(entry).log, entry.kind) if entry.kind else None
    if entry.kind != "predict_log":
        return [LoggedImage(note=f"a {entry.kind.removesuffix('_log') or 'empty'} "
                                 "request: its input is not an image")]
    request = body.request
    shown: list[LoggedImage] = []
    if IMAGE_BYTES in request.inputs:
        for raw in tensors.from_proto(request.inputs[IMAGE_BYTES]).ravel():
            raw = bytes(raw)
            try:
                with Image.open(io.BytesIO(raw)) as probe:
                    ext = _FORMATS.get(probe.format or "", ".img")
                    picture = probe.convert("RGB")
            except Exception:
                shown.append(LoggedImage(encoded=raw, note=(
                    f"the logged {IMAGE_BYTES} ({len(raw)} bytes) is not an image this "
                    "page can read")))
                continue
            shown.append(LoggedImage(picture, raw, ext))
    elif IMAGES in request.inputs:
        array = tensors.from_proto(request.inputs[IMAGES])
        batch = array if array.ndim == 4 else array[None] if array.ndim == 3 else None
        if (batch is None or batch.shape[-1] != 3
                or not (array.dtype == np.uint8 or array.dtype.kind == "f")):
            shown.append(LoggedImage(note=f"the input {IMAGES} is {_shape(array)}: not "
                                          "an image (one is uint8 or float [H, W, 3])"))
        else:
            shown += [LoggedImage(Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)))
                      for a in batch]
    else:
        given = ", ".join(f"{k} {_shape(tensors.from_proto(v))}"
                          for k, v in sorted(request.inputs.items()))
        shown.append(LoggedImage(note=f"inputs {given or 'none'}: no image among them"))
    if not masks:
        return shown
    found = _masks(entry) if entry.has_response else []
    for k, item in enumerate(shown):
        if item.picture is None:
            continue
        if k >= len(found):
            outputs = ", ".join(sorted(body.response.outputs)) or "none"
            item.note = ("the response was not logged" if not entry.has_response else
                         f"the logged response has no mask (outputs: {outputs})")
            continue
        mask, (w, h) = found[k], item.picture.size
        if mask.width >= w and mask.height >= h and (mask.width, mask.height) != (w, h) \
                and _padded(mask, w, h):
            mask = mask.crop((0, 0, w, h))  # a batch of mixed sizes: padded with 255
        item.mask = resize_mask(mask, (h, w))
    return shown


def _padded(mask, w: int, h: int) -> bool:
    """Whether everything of ``mask`` outside its top-left w x h is the 255 padding."""
    import numpy as np

    arr = np.asarray(mask)
    return bool((arr[h:] == 255).all() and (arr[:, w:] == 255).all())


def export(path: str | Path, out_dir: str | Path, *, masks: bool = True) -> list[dict]:
    """Write the images of the logged Predict requests to ``out_dir/images`` (named
    ``<log file>-<n>``, plus ``-<k>`` for the k-th image of a batch; encoded images keep
    their bytes and format, arrays become PNG) and, where the response was logged and
    ``masks``, their masks (``masks/<same>.png``, palette) and overlays
    (``overlays/<same>.jpg``): folders apart, so ``images/`` alone is a probe or
    calibration set.  Returns one dict per image
    written (``image``, ``mask``, ``overlay``, ``model``, ``version``, ``signature``)."""
    from tfdeploy.client.masks import overlay, save_atomic

    out = Path(out_dir)
    written = []
    for entry in entries(path):
        if entry.kind != "predict_log":
            continue
        shown = logged_images(entry, masks=masks)
        for k, item in enumerate(shown):
            if item.picture is None:
                continue  # not an image (a logged request the server refused to decode)
            stem = entry.stem if len(shown) == 1 else f"{entry.stem}-{k}"
            if item.encoded is not None:
                target = out / "images" / f"{stem}{item.ext}"
                save_atomic(item.encoded, target)
            else:
                target = out / "images" / f"{stem}.png"
                save_atomic(item.picture, target)
            row = {"image": str(target), "model": entry.model, "version": entry.version,
                   "signature": entry.signature, "mask": None, "overlay": None}
            if item.mask is not None:
                save_atomic(item.mask, out / "masks" / f"{stem}.png")
                save_atomic(overlay(item.picture, item.mask), out / "overlays" / f"{stem}.jpg",
                            format="JPEG", quality=90)
                row["mask"] = str(out / "masks" / f"{stem}.png")
                row["overlay"] = str(out / "overlays" / f"{stem}.jpg")
            written.append(row)
    return written
