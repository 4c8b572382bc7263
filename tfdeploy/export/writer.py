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
from tfdeploy.export import frozen, source_precision, sources, tiling, warmup, wrapped
from tfdeploy.export.agreement import (
    Agreement,
    image_key,
    measure,
    probe_images,
    user_images,
)
from tfdeploy.export.config import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_AGREEMENT,
    DEFAULT_PRECISION,
    INT8_KERNELS,
)
from tfdeploy.export.labels import add_signature as add_class_names
from tfdeploy.export.labels import check_count, default_names, read_labels
from tfdeploy.export.model import ASPP_SCOPE, DeepLabV3, choose_float_blocks
from tfdeploy.export.precision import (
    INT8_SERVERS,
    check_precision,
    cpu_flags,
    cpu_runs_fast,
    speed_warning,
)
from tfdeploy.export.preflight import check_version
from tfdeploy.export.signatures import ServingModule
from tfdeploy.tfimport import onednn_enabled
from tfdeploy.tfs import onednn
from tfdeploy.tfs.codes import tf_error_message
from tfdeploy.tfs.names import (
    CLASS_NAMES,
    DEFAULT_MODEL_NAME,
    PREDICT_IMAGES,
    SEGMENTATION_MAP,
    SERVING_DEFAULT,
)
from tfdeploy.tfs.versions import METADATA_FILE, numeric_dirs

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
    precision: str = DEFAULT_PRECISION
    batch_norm_folded: bool = True
    #: Fraction of probe pixels whose class matches the float32 checkpoint model: pooled,
    #: and on the worst image (which --min-agreement gates); per image in ``agreement``.
    pixel_agreement: float | None = None
    min_pixel_agreement: float | None = None
    agreement: dict | None = None
    warnings: list[str] = field(default_factory=list)
    #: Largest image (height x width) the signatures accept, checked in the graph.
    max_pixels: int = DEFAULT_MAX_PIXELS
    #: int8: the images the activation ranges came from ({"images": N, "names": [...]}).
    calibration: dict | None = None
    #: Which model servers can run this export (int8 needs oneDNN's int8 kernels).
    servers: str | None = None
    #: int8: the oneDNN kernel set it runs on (``precision.INT8_KERNELS``)
    int8_kernels: str | None = None
    #: What was exported: ``checkpoint`` or ``frozen_graph`` (see export/sources.py).
    source: str = sources.CHECKPOINT
    #: int8: blocks kept out of int8 by the sensitivity pass (mixed precision), what they
    #: compute in (bfloat16 on a CPU with native bfloat16 kernels, else float32) and the
    #: pass's steps ({"blocks": [...], "of": N, "precision": p, "target": x, "steps": [...]}).
    mixed_precision: dict | None = None
    #: --tile: {"tile": N, "overlap": M, "batch": B, "max_pixels": P}; None = untiled.
    tiling: dict | None = None

    def summary(self) -> str:
        """What the export did, for people: the version path, then one line."""
        check = (f"verified on {len(self.agreement['images'])} images (pixel agreement "
                 f"with float32 {self.pixel_agreement:.2%}, worst image "
                 f"{self.min_pixel_agreement:.2%}; max logit diff "
                 f"{self.max_abs_logit_diff:.2g})" if self.verified else "not verified")
        if self.calibration:
            held = (self.agreement or {}).get("held_out") or {}
            mixed = self.mixed_precision or {}
            kept = (f"{len(mixed['blocks'])} of {mixed['of']} blocks kept in "
                    f"{mixed.get('precision', 'float32')} "
                    f"({', '.join(map(_block_name, mixed['blocks']))})"
                    if mixed.get("blocks") else "every block in int8")
            check = (f"calibrated on {self.calibration['images']} images, {kept}; {check}"
                     + (f"; held-out images ({held['images']}) {held['pixel_agreement']:.2%}, "
                        f"worst {held['min_pixel_agreement']:.2%}" if held.get("images") else
                        "; no held-out images (pass --calibration to calibrate on others)"
                        if self.verified else ""))
        what = (f"{self.format} checkpoint, {self.num_classes} classes, "
                f"OS{self.output_stride}" if self.source == sources.CHECKPOINT else
                f"{self.format}, {self.num_classes} classes")
        return (f"{self.path}\n"
                f"exported {self.backbone} ({what}, {self.precision}) as version "
                f"{self.version}"
                f"{' (replaced)' if self.replaced else ''}: signatures "
                f"{', '.join(self.signatures)}; {self.warmup_records} warmup records; "
                f"{check}; {self.seconds:.1f}s")

    def to_json(self) -> dict:
        return asdict(self)


def _block_name(block: str) -> str:
    """``block3/unit_2`` for a bottleneck unit's scope, ``ASPP`` for the ASPP block."""
    return "ASPP" if block == ASPP_SCOPE else "/".join(block.split("/")[1:3])


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


def verify(version_dir: Path, reference: DeepLabV3, precision: str = "float32",
           probes: list[tuple[str, np.ndarray]] | None = None,
           min_agreement: float = DEFAULT_MIN_AGREEMENT,
           calibration: frozenset[str] = frozenset()) -> Agreement:
    """Reload the written SavedModel and compare it with the float32 checkpoint model
    (``reference``) on the probe images.

    - float32: logits within LOGIT_TOLERANCE, relative to the logits' scale where that
      exceeds 1 (float32 itself rounds at ~1e-7 of the value, and folded BatchNorm
      reorders the arithmetic);
    - every precision: on each probe image, masks agree on >= ``min_agreement`` of pixels;
    - both signatures return the masks of the export's own logits.

    Returns the measured agreement; raises ExportError on any failure."""
    probes = probe_images() if probes is None else probes
    loaded = tf.saved_model.load(str(version_dir))
    agreement = measure(reference, loaded, probes, calibration)
    if precision == "float32":
        for item in agreement.images:
            allowed = LOGIT_TOLERANCE * max(1.0, item.max_abs_logit)
            if not item.max_abs_logit_diff <= allowed:
                raise ExportError(
                    f"verification failed on {item.name}: max abs logit difference "
                    f"{item.max_abs_logit_diff:.3g} > {allowed:.3g} (float32 must match the "
                    f"checkpoint to {LOGIT_TOLERANCE:g} of the logit scale)")
    worst = agreement.worst()
    if not worst.pixel_agreement >= min_agreement:
        raise ExportError(
            f"verification failed: the {precision} export agrees with the float32 model on "
            f"{worst.pixel_agreement:.2%} of the pixels of {worst.name} (required "
            f"{min_agreement:.2%}; all probes pooled {agreement.pixel_agreement:.2%}, max "
            f"logit difference {agreement.max_abs_logit_diff:.3g})")
    image = warmup.probe_image()
    batch = tf.constant(image[None].astype(np.float32))
    mask = loaded.logits(batch).numpy().argmax(-1)
    h, w = image.shape[:2]
    out = loaded.signatures[PREDICT_IMAGES](
        images=batch, height=tf.constant([h]), width=tf.constant(w))[SEGMENTATION_MAP]
    if not np.array_equal(out.numpy(), mask):
        raise ExportError(f"verification failed: {PREDICT_IMAGES} mask differs from the logits")
    out = loaded.signatures[SERVING_DEFAULT](
        image_bytes=tf.constant([warmup.encode_png(image)]))
    if not np.array_equal(out[SEGMENTATION_MAP].numpy().astype(np.int64), mask):
        raise ExportError(f"verification failed: {SERVING_DEFAULT} mask differs from the logits")
    return agreement


def class_names(source: ckpt.Checkpoint) -> list[str] | None:
    """The names of the checkpoint's classes, where known: the demo's shapes, or Pascal
    VOC's for a 21-class seed checkpoint (what the seed trains on); None otherwise."""
    from tfdeploy.demo import DEMO_CHECKPOINT
    from tfdeploy.palette import VOC_CLASSES

    if Path(source.prefix).resolve().parent == DEMO_CHECKPOINT:
        from tfdeploy.demo.scenes import CLASSES

        if len(CLASSES) == source.config.num_classes:
            return list(CLASSES)
    if source.format == "seed" and source.config.num_classes == len(VOC_CLASSES):
        return list(VOC_CLASSES)
    return None


def foreign_class_names(num_classes: int) -> list[str] | None:
    """A wrapped model's class names: Pascal VOC's for 21 classes (what the DeepLab model
    zoo's and most DeepLab models are trained on); None otherwise."""
    return default_names(num_classes)


def export(
    checkpoint_path: str | Path | None = None,
    output: str | Path = "models/deeplab",
    version: int | None = None,
    overwrite: bool = False,
    do_verify: bool = True,
    do_warmup: bool = True,
    model_name: str = DEFAULT_MODEL_NAME,
    progress: Progress | None = None,
    precision: str = DEFAULT_PRECISION,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    probes: list[str | Path] = (),
    max_pixels: int = DEFAULT_MAX_PIXELS,
    calibration: list[str | Path] = (),
    input_tensor: str | None = None,
    output_tensor: str | None = None,
    preprocess: str = wrapped.DEFAULT_PREPROCESS,
    input_size: str | None = None,
    tile: int | None = None,
    tile_overlap: int | None = None,
    tile_batch: int = tiling.DEFAULT_TILE_BATCH,
    tile_max_pixels: int = tiling.DEFAULT_TILE_MAX_PIXELS,
    labels: str | Path | None = None,
    fallback_precision: str = "auto",
    int8_kernels: str = "fused",
) -> ExportResult:
    """Export a checkpoint (default: the bundled demo) as version ``version`` (default:
    next) of the base ``output``.

    The served graph computes in ``precision`` with BatchNorm folded into the
    convolutions; verification compares it with the plain float32 checkpoint model on the
    probe images (synthetic, demo, and the image files/directories in ``probes``).

    int8 takes its activation ranges from ``calibration`` (image files/directories;
    default: the probe images), run through the float32 model, and runs on the oneDNN
    kernel set ``int8_kernels`` (``fused``: TensorFlow 2.17 or later; ``portable``: any
    TensorFlow 2 with oneDNN, slower; see ``precision.INT8_KERNELS``).

    ``checkpoint_path`` may also be a frozen graph (a model-zoo ``.pb``, its folder or
    tarball; ``input_tensor``/``output_tensor`` name other graphs' tensors): it is wrapped
    unchanged, and verification requires its masks on every probe pixel.  A Keras model
    file or a SavedModel directory is wrapped the same way, its input made from 0..255
    pixels by ``preprocess`` and resized to ``input_size`` (``HxW``) if it needs one;
    a Keras model computes in ``precision`` (bfloat16/float16) where a frozen graph or a
    SavedModel is refused any but float32.

    ``labels`` (a file, one class name per line) names the classes; they are stored in
    ``tfdeploy.json`` and served by the export as the ``class_names`` signature.

    ``tile`` (pixels): images larger than this on either side are segmented in
    overlapping tiles (``tile_overlap`` pixels, default an eighth of the tile;
    ``tile_batch`` tiles at a time) whose logits are blended, inside the graph (see
    export/tiling.py); such images may have up to ``tile_max_pixels`` pixels.
    Verification compares the tiled export with the source model tiled the same way."""
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
    check_version(version, base)
    check_precision(precision)
    if max_pixels < 1:
        raise UserError(f"must be at least 1, got {max_pixels}", param="max_pixels")
    if not 0.0 <= min_agreement <= 1.0:
        raise UserError(f"must be between 0% and 100%, got {min_agreement:.2%}",
                        param="min_agreement")
    problem = tiling.check_tiling(tile, tile_overlap, tile_batch, tile_max_pixels)
    if problem:
        raise UserError(problem)
    probe_set = probe_images(probes) if do_verify else []
    calibration_set: list[tuple[str, np.ndarray]] = []
    if precision == "int8":
        calibration_set = (user_images(calibration, "calibration") if calibration
                           else probe_set or probe_images(probes))
    elif calibration:
        raise UserError("only an int8 export is calibrated", param="calibration")
    if fallback_precision not in ("auto", "float32", "bfloat16"):
        raise UserError(f"unknown fallback precision {fallback_precision!r} (choose from "
                        "auto, float32, bfloat16)", param="fallback_precision")
    if fallback_precision != "auto" and precision != "int8":
        raise UserError("only an int8 export keeps blocks in a fallback precision",
                        param="fallback_precision")
    if int8_kernels not in INT8_KERNELS:
        raise UserError(f"unknown int8 kernels {int8_kernels!r} (choose from "
                        f"{', '.join(INT8_KERNELS)})", param="int8_kernels")
    if int8_kernels != "fused" and precision != "int8":
        raise UserError("only an int8 export runs on int8 kernels", param="int8_kernels")
    if precision == "int8" and not onednn_enabled():
        why = (f"{onednn.ENV}={os.environ[onednn.ENV]}" if onednn.setting() is False else
               f"TensorFlow started before {onednn.ENV}=1 could be set (set it before "
               "importing TensorFlow)")
        raise UserError("an int8 export runs on TensorFlow's oneDNN int8 kernels, which are "
                        f"off in this process: {why}", param="precision")
    if fallback_precision == "auto":
        # bfloat16 where it is native: measured on an AMD EPYC with AVX512_BF16, the
        # trained resnet_v2_50 reached 99% with 13 of 17 blocks in bfloat16 at 0.31x
        # float32 latency, where 3 blocks in float32 cost 0.61x.
        fallback_precision = ("bfloat16" if cpu_runs_fast("bfloat16", cpu_flags())
                              else DEFAULT_PRECISION)
    kind = sources.detect(checkpoint_path)
    foreign = kind.kind != sources.CHECKPOINT
    source_precision.check(kind.kind, precision)
    label_names = read_labels(labels) if labels is not None else None
    if kind.kind not in (sources.KERAS, sources.SAVED_MODEL) and (
            input_size or preprocess != wrapped.DEFAULT_PREPROCESS):
        raise UserError("--preprocess/--input-size apply to Keras models and SavedModels",
                        param="preprocess")
    if kind.kind != sources.FROZEN_GRAPH and (input_tensor or output_tensor):
        raise UserError("--input-tensor/--output-tensor name a frozen graph's tensors; "
                        f"{checkpoint_path} is not one", param="input_tensor")
    t = time.perf_counter()
    say(f"reading {kind.kind.replace('_', ' ')} {checkpoint_path}")
    graph_model = source = weights = None
    if kind.kind == sources.FROZEN_GRAPH:
        graph_model = frozen.FrozenGraphModel(frozen.read_graph_def(kind.path, kind.data),
                                              input_tensor or frozen.ZOO_INPUT,
                                              output_tensor or frozen.ZOO_OUTPUT)
        origin = {"checkpoint": str(kind.given.absolute()), "format": "frozen graph",
                  "backbone": kind.given.name, "num_classes": graph_model.contract.num_classes,
                  "output_stride": 0,
                  "config": {"input_tensor": graph_model.contract.input_name,
                             "output_tensor": graph_model.contract.output_name,
                             "input_dtype": graph_model.contract.input_dtype.name,
                             "output": "logits" if graph_model.contract.logits else "labels"}}
    elif foreign:
        size = wrapped.parse_size(input_size)
        if precision != DEFAULT_PRECISION:
            say(f"rebuilding the Keras model to compute in {precision}")
        graph_model = wrapped.WrappedModel(kind.path, kind.kind, preprocess, size,
                                           precision=precision)
        origin = {"checkpoint": str(kind.given.absolute()),
                  "format": "Keras model" if kind.kind == sources.KERAS else "SavedModel",
                  "backbone": kind.given.name, "num_classes": graph_model.num_classes,
                  "output_stride": 0,
                  "config": {"preprocess": preprocess,
                             "input_size": list(graph_model.input_size or []) or None,
                             "output": "logits" if graph_model.logits_out else "labels"}}
    else:
        source = ckpt.locate(checkpoint_path)
        weights = source.load_weights()
        origin = {"checkpoint": str(source.prefix), "format": source.format,
                  "backbone": source.config.backbone, "num_classes": source.config.num_classes,
                  "output_stride": source.config.output_stride,
                  "config": source.config.to_json()["model"]}
    t = lap("read_checkpoint", t)
    names = (check_count(label_names, origin["num_classes"], labels) if label_names else
             class_names(source) if source is not None else
             foreign_class_names(origin["num_classes"]))
    warnings = []
    if precision != DEFAULT_PRECISION:
        say(f"checking this CPU for native {precision} kernels")
        has_gpu = bool(tf.config.list_physical_devices("GPU"))
        warning = speed_warning(precision, cpu_flags(), has_gpu=has_gpu)
        if warning:
            warnings.append(warning)
    if precision == "int8" and fallback_precision != DEFAULT_PRECISION:
        warning = speed_warning(fallback_precision, cpu_flags())
        if warning:
            warnings.append(warning)
    if precision == "int8":
        warnings.append(INT8_SERVERS[int8_kernels])
    existing = numeric_dirs(base)
    number = check_version(version, base)
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
        mixed = None
        if graph_model is not None:
            say(f"wrapping the {kind.kind.replace('_', ' ')}")
            model = graph_model
        else:
            say(f"building {source.config.backbone} (output stride "
                f"{source.config.output_stride}, {precision}, BatchNorm folded)")
            ranges, float_blocks = None, []
            if calibration_set:
                say(f"calibrating int8 activation ranges on {len(calibration_set)} images")
                # pre-activations folded into the stream: the int8 graph quantizes the
                # stream itself (the ranges record it, and the int8 models follow)
                reference = DeepLabV3(source.config, weights, fold_batch_norm=True,
                                      fold_preacts=True)
                ranges = reference.calibrate(image for _, image in calibration_set)
                t = lap("calibrate", t)
                block_precision = fallback_precision
                say(f"choosing blocks to keep in {block_precision} (worst calibration "
                    f"image >= {min_agreement:.2%} of pixels agreeing with float32)")
                probe = DeepLabV3(source.config, weights, precision="int8",
                                  fold_batch_norm=True, activation_ranges=ranges, mixed=True,
                                  block_precision=block_precision, int8_kernels=int8_kernels)
                float_blocks, steps = choose_float_blocks(
                    probe, [image for _, image in calibration_set], min_agreement, reference)
                mixed = {"blocks": float_blocks, "of": len(probe.blocks),
                         "precision": block_precision, "target": min_agreement,
                         "steps": steps}
                del probe, reference
                t = lap("sensitivity", t)
            model = DeepLabV3(source.config, weights, precision=precision,
                              fold_batch_norm=True, activation_ranges=ranges,
                              float_blocks=float_blocks,
                              block_precision=(mixed or {}).get("precision", "float32"),
                              int8_kernels=int8_kernels)
        classes = origin["num_classes"]
        module = ServingModule(tiling.tiled(model, classes, tile, tile_overlap, tile_batch,
                                            tile_max_pixels), max_pixels)
        signatures = module.signatures()
        if names:
            signatures = add_class_names(module, names, signatures)
        say("writing SavedModel")
        tf.saved_model.save(module, str(tmp), signatures=signatures)
        t = lap("save", t)
        records = 0
        if do_warmup:
            say("writing warmup requests")
            records = warmup.write(tmp, model_name)
            t = lap("warmup", t)
        agreement = None
        if do_verify and kind.kind == sources.FROZEN_GRAPH:
            say(f"verifying against the frozen graph on {len(probe_set)} images")
            agreement = frozen.verify(tmp, tiling.tiled(frozen.FrozenGraphModel(
                frozen.read_graph_def(kind.path, kind.data), graph_model.contract.input_name,
                graph_model.contract.output_name, graph_model.contract.num_classes),
                classes, tile, tile_overlap, tile_batch, tile_max_pixels), probe_set)
            t = lap("verify", t)
        elif do_verify and foreign and precision != DEFAULT_PRECISION:
            say(f"verifying against the float32 source model on {len(probe_set)} images")
            agreement = verify(tmp, tiling.tiled(wrapped.WrappedModel(
                kind.path, kind.kind, preprocess, graph_model.input_size), classes, tile,
                tile_overlap, tile_batch, tile_max_pixels), precision, probe_set,
                min_agreement)
            t = lap("verify", t)
        elif do_verify and foreign:
            say(f"verifying against the source model on {len(probe_set)} images")
            agreement = frozen.verify(tmp, tiling.tiled(wrapped.WrappedModel(
                kind.path, kind.kind, preprocess, graph_model.input_size), classes, tile,
                tile_overlap, tile_batch, tile_max_pixels), probe_set, "the source model's")
            t = lap("verify", t)
        elif do_verify:
            say(f"verifying against the float32 checkpoint model on {len(probe_set)} images")
            reference = tiling.tiled(DeepLabV3(source.config, weights), classes, tile,
                                     tile_overlap, tile_batch, tile_max_pixels)
            agreement = verify(tmp, reference, precision, probe_set,
                               min_agreement, frozenset(image_key(n) for n, _ in calibration_set))
            t = lap("verify", t)
        result = ExportResult(
            version=number, path=str(base / str(number)), checkpoint=origin["checkpoint"],
            format=origin["format"], backbone=origin["backbone"],
            num_classes=origin["num_classes"], output_stride=origin["output_stride"],
            signatures=[PREDICT_IMAGES, SERVING_DEFAULT] + ([CLASS_NAMES] if names else []),
            warmup_records=records,
            verified=do_verify, seconds=0.0, replaced=number in existing, timings=timings,
            precision=precision, batch_norm_folded=graph_model is None, warnings=warnings,
            max_pixels=max_pixels,
            max_abs_logit_diff=agreement.max_abs_logit_diff if agreement else None,
            pixel_agreement=agreement.pixel_agreement if agreement else None,
            min_pixel_agreement=agreement.min_pixel_agreement if agreement else None,
            agreement=agreement.to_json() if agreement else None,
            calibration={"images": len(calibration_set),
                         "names": [n for n, _ in calibration_set]} if calibration_set else None,
            servers=INT8_SERVERS[int8_kernels] if precision == "int8" else None,
            int8_kernels=int8_kernels if precision == "int8" else None, source=kind.kind,
            mixed_precision=mixed,
            tiling=tiling.describe(tile, tile_overlap, tile_batch, tile_max_pixels),
        )
        meta = tmp / METADATA_FILE
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text(json.dumps({
            "checkpoint": origin["checkpoint"], "format": origin["format"],
            "source": kind.kind, "config": origin["config"], "exported_at": time.time(),
            "precision": precision, "batch_norm_folded": result.batch_norm_folded,
            "max_pixels": max_pixels,
            "agreement": result.agreement, "calibration": result.calibration,
            "servers": result.servers, "int8_kernels": result.int8_kernels,
            "mixed_precision": result.mixed_precision,
            "tiling": result.tiling,
            # class index -> name, for clients that report per-class results
            "class_names": names,
            # where they came from: the --labels file, or None (defaults)
            "labels_file": str(Path(labels).absolute()) if label_names else None,
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
