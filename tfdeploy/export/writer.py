"""Checkpoint -> numbered SavedModel version, atomically and verified.

The version is written into a hidden temporary directory next to its target (same file
system), verified there, and only then renamed to ``<base>/<N>``.  A server polling the
base path therefore never sees a half-written version, whatever kills the export.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfdeploy.errors import ExportError, UserError
from tfdeploy.export import checkpoint as ckpt
from tfdeploy.export import warmup
from tfdeploy.export.model import DeepLabV3
from tfdeploy.export.signatures import ServingModule
from tfdeploy.tfs.codes import tf_error_message
from tfdeploy.tfs.names import (
    DEFAULT_MODEL_NAME,
    PREDICT_IMAGES,
    SEGMENTATION_MAP,
    SERVING_DEFAULT,
)
from tfdeploy.tfs.versions import METADATA_FILE, next_version, numeric_dirs

TMP_PREFIX = ".tfdeploy-export-"
LOGIT_TOLERANCE = 1e-4

Progress = Callable[[str], None]


@dataclass
class ExportResult:
    version: int
    path: str
    checkpoint: str
    format: str
    backbone: str
    num_classes: int
    output_stride: int
    signatures: list[str]
    warmup_records: int
    verified: bool
    max_abs_logit_diff: float | None
    seconds: float
    replaced: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        """What the export did, for people: the version path, then one line."""
        check = (f"verified (max logit diff {self.max_abs_logit_diff:.2g})"
                 if self.verified else "not verified")
        return (f"{self.path}\n"
                f"exported {self.backbone} ({self.format} checkpoint, {self.num_classes} "
                f"classes, OS{self.output_stride}) as version {self.version}"
                f"{' (replaced)' if self.replaced else ''}: signatures "
                f"{', '.join(self.signatures)}; {self.warmup_records} warmup records; "
                f"{check}; {self.seconds:.1f}s")

    def to_json(self) -> dict:
        return asdict(self)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temps(base: Path) -> list[Path]:
    """Remove temporary directories left by exports that were killed (their pid is gone)."""
    removed = []
    for child in base.glob(f"{TMP_PREFIX}*") if base.is_dir() else []:
        parts = child.name[len(TMP_PREFIX):].split("-")
        if len(parts) >= 2 and parts[1].isdigit() and not _pid_alive(int(parts[1])):
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
    return removed


def verify(version_dir: Path, model: DeepLabV3) -> float:
    """Reload the written SavedModel and compare it with the in-memory checkpoint model on
    a probe image: logits within LOGIT_TOLERANCE and identical masks from both signatures.
    Returns the max abs logit difference; raises ExportError on any mismatch."""
    image = warmup.probe_image()
    batch = tf.constant(image[None].astype(np.float32))
    expected = model.logits(batch).numpy()
    loaded = tf.saved_model.load(str(version_dir))
    diff = float(np.max(np.abs(loaded.logits(batch).numpy() - expected)))
    if not diff <= LOGIT_TOLERANCE:
        raise ExportError(f"verification failed: max abs logit difference {diff:.3g} "
                          f"> {LOGIT_TOLERANCE:g}")
    mask = expected.argmax(-1)
    h, w = image.shape[:2]
    out = loaded.signatures[PREDICT_IMAGES](
        images=batch, height=tf.constant([h]), width=tf.constant(w))[SEGMENTATION_MAP]
    if not np.array_equal(out.numpy(), mask):
        raise ExportError(f"verification failed: {PREDICT_IMAGES} mask differs from checkpoint")
    out = loaded.signatures[SERVING_DEFAULT](
        image_bytes=tf.constant([warmup.encode_png(image)]))
    if not np.array_equal(out[SEGMENTATION_MAP].numpy().astype(np.int64), mask):
        raise ExportError(f"verification failed: {SERVING_DEFAULT} mask differs from checkpoint")
    return diff


def export(
    checkpoint_path: str | Path | None = None,
    output: str | Path = "models/deeplab",
    version: int | None = None,
    overwrite: bool = False,
    do_verify: bool = True,
    do_warmup: bool = True,
    model_name: str = DEFAULT_MODEL_NAME,
    progress: Progress | None = None,
) -> ExportResult:
    """Export a checkpoint (default: the bundled demo) as version ``version`` (default:
    next) of the base ``output``."""
    if checkpoint_path is None:
        from tfdeploy.demo import DEMO_CHECKPOINT

        checkpoint_path = DEMO_CHECKPOINT
    say = progress or (lambda _msg: None)
    started = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str, t0: float) -> float:
        timings[name] = round(time.perf_counter() - t0, 3)
        return time.perf_counter()

    base = Path(output).absolute()
    if base.exists() and not base.is_dir():
        raise UserError(f"{base}: output base path exists and is not a directory")
    if version is not None and version < 1:
        raise UserError(f"must be a positive integer, got {version}", param="version")
    t = time.perf_counter()
    say(f"reading checkpoint {checkpoint_path}")
    source = ckpt.locate(checkpoint_path)
    weights = source.load_weights()
    t = lap("read_checkpoint", t)
    existing = numeric_dirs(base)
    number = version if version is not None else next_version(base)
    if number in existing and not overwrite:
        raise UserError(f"version {number} already exists at {existing[number]} "
                        "(pass --overwrite to replace it, or omit --version)")

    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {base} ({exc.strerror})", param="output") from None
    clean_stale_temps(base)
    tmp = base / f"{TMP_PREFIX}{number}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        say(f"building {source.config.backbone} (output stride {source.config.output_stride})")
        model = DeepLabV3(source.config, weights)
        module = ServingModule(model)
        say("writing SavedModel")
        tf.saved_model.save(module, str(tmp), signatures=module.signatures())
        t = lap("save", t)
        records = 0
        if do_warmup:
            say("writing warmup requests")
            records = warmup.write(tmp, model_name)
            t = lap("warmup", t)
        diff = None
        if do_verify:
            say("verifying against the checkpoint")
            diff = verify(tmp, model)
            t = lap("verify", t)
        result = ExportResult(
            version=number, path=str(base / str(number)), checkpoint=str(source.prefix),
            format=source.format, backbone=source.config.backbone,
            num_classes=source.config.num_classes, output_stride=source.config.output_stride,
            signatures=[PREDICT_IMAGES, SERVING_DEFAULT], warmup_records=records,
            verified=do_verify, max_abs_logit_diff=diff, seconds=0.0,
            replaced=number in existing, timings=timings,
        )
        meta = tmp / METADATA_FILE
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text(json.dumps({
            "checkpoint": str(source.prefix), "format": source.format,
            "config": source.config.to_json()["model"], "exported_at": time.time(),
        }, indent=2))
        _publish(tmp, base / str(number), replace=number in existing)
    except OSError as exc:  # disk full, quota, permissions while writing
        raise ExportError(f"cannot write the export under {base} "
                          f"({exc.strerror or exc}); nothing was published") from None
    except tf.errors.OpError as exc:  # TF's own file writes (SavedModel, warmup records)
        raise ExportError(f"cannot write the export under {base} "
                          f"({tf_error_message(exc)}); nothing was published") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result.seconds = round(time.perf_counter() - started, 3)
    return result


def _publish(tmp: Path, target: Path, replace: bool) -> None:
    """Rename the finished version into place.  With --overwrite the old version is first
    moved aside (still hidden), so the target is never a mix of old and new files."""
    trash = None
    if replace and target.exists():
        trash = target.with_name(f"{TMP_PREFIX}old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        os.rename(target, trash)
    try:
        os.rename(tmp, target)
    except OSError as exc:
        if trash is not None:
            os.rename(trash, target)
        raise UserError(f"{target}: cannot publish version ({exc.strerror})") from None
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
