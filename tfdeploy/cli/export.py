"""``tfdeploy export`` and ``tfdeploy inspect``."""

from __future__ import annotations

from pathlib import Path

import click

from tfdeploy.cli.app import emit, main, progress_printer
from tfdeploy.export.config import (
    DEFAULT_MAX_SIDE,
    DEFAULT_MIN_AGREEMENT,
    DEFAULT_PRECISION,
    FUSED_INT8_TENSORFLOW,
    INT8_KERNELS,
    PRECISIONS,
)
from tfdeploy.export.tilespec import (
    DEFAULT_TILE_BATCH,
    DEFAULT_TILE_MAX_SIDE,
)
from tfdeploy.tfs.names import DEFAULT_MODEL_NAME


@main.command(short_help="Checkpoint -> numbered, verified SavedModel version.")
@click.argument("checkpoint", required=False, type=click.Path(path_type=Path))
@click.option("--output", "-o", default="models/deeplab", show_default=True,
              type=click.Path(path_type=Path), help="Model base path (versions go below it).")
@click.option("--version", "version", type=int, default=None,
              help="Version number to write [default: highest existing + 1].")
@click.option("--overwrite", is_flag=True, help="Replace the version if it exists.")
@click.option("--no-verify", is_flag=True, help="Skip reloading and comparing the export.")
@click.option("--no-warmup", is_flag=True, help="Do not write warmup requests.")
@click.option("--model-name", default=DEFAULT_MODEL_NAME, show_default=True,
              help="Model name used in the warmup requests.")
@click.option("--precision", type=click.Choice(PRECISIONS),
              default=DEFAULT_PRECISION, show_default=True,
              help="Dtype of the stored weights and convolutions (logits stay float32). "
                   "bfloat16 for CPUs with AVX512_BF16/AMX, float16 for GPUs, int8 for "
                   "CPUs with VNNI/AMX (oneDNN builds of TF Serving only).  A Keras model: "
                   "bfloat16/float16 compute with float32 weights; a frozen graph or "
                   "SavedModel: float32 only.")
@click.option("--min-agreement", type=click.FloatRange(0, 100),
              default=DEFAULT_MIN_AGREEMENT * 100,
              show_default=True, metavar="PERCENT",
              help="Fail unless, on every probe image, this percentage of mask pixels "
                   "matches the float32 checkpoint model.")
@click.option("--probe", "probes", multiple=True, type=click.Path(path_type=Path),
              help="Extra verification images (files or directories), e.g. photographs "
                   "like your traffic.  Always used: a synthetic probe and examples/.")
@click.option("--calibration", "calibration", multiple=True, type=click.Path(path_type=Path),
              metavar="FILE|DIR",
              help="int8: images whose activation ranges set the quantization scales "
                   "[default: the verification probes].")
@click.option("--fallback-precision", type=click.Choice(["auto", "float32", "bfloat16"]),
              default="auto", show_default=True,
              help="int8: what the blocks kept out of int8 (to reach --min-agreement) "
                   "compute in.  auto: bfloat16 on CPUs with AVX512_BF16/AMX (several "
                   "times faster there; it rounds too, so more blocks may be needed), "
                   "else float32.")
@click.option("--int8-kernels", type=click.Choice(INT8_KERNELS), default=INT8_KERNELS[0],
              show_default=True,
              help="int8: the oneDNN kernels the export runs on.  fused: fastest; needs "
                   f"TensorFlow {FUSED_INT8_TENSORFLOW} or later in the server "
                   f"(tensorflow_model_server {FUSED_INT8_TENSORFLOW}+ built with "
                   "--config=mkl).  portable: any TensorFlow 2 built with oneDNN, 5-10% "
                   "slower.")
@click.option("--max-pixels", default=f"{DEFAULT_MAX_SIDE}x{DEFAULT_MAX_SIDE}", show_default=True,
              metavar="WxH|PIXELS",
              help="Largest image the model accepts; checked in the graph from the image "
                   "header before decoding (decompression bombs are refused by any "
                   "server, TF Serving's too).")
@click.option("--input-tensor", default=None, metavar="NAME",
              help="Frozen graph: its image input [default: ImageTensor:0, the DeepLab "
                   "model zoo's; uint8 or float pixels].")
@click.option("--output-tensor", default=None, metavar="NAME",
              help="Frozen graph: its labels or logits output [default: "
                   "SemanticPredictions:0].")
@click.option("--preprocess", type=click.Choice(["0..255", "0..1", "-1..1", "imagenet"]),
              default="0..255", show_default=True,
              help="Keras model / SavedModel: the pixel range it was trained on (imagenet: "
                   "0..1 minus ImageNet mean, over its std).")
@click.option("--input-size", default=None, metavar="HxW",
              help="Keras model / SavedModel: resize images to this size for the model and "
                   "its output back [default: the model's fixed size, if any, else none].")
@click.option("--tile", type=int, default=None, metavar="N",
              help="Segment images larger than NxN (either side) in overlapping NxN tiles "
                   "whose logits are blended, inside the graph (any server) [default: "
                   "whole images].  Images that fit a tile get exactly the untiled masks.")
@click.option("--tile-overlap", type=int, default=None, metavar="M",
              help="With --tile: pixels neighbouring tiles share [default: N/8, 64 for "
                   "513].")
@click.option("--tile-batch", type=int, default=DEFAULT_TILE_BATCH, show_default=True,
              metavar="B", help="With --tile: tiles run at once (memory: B tiles' worth).")
@click.option("--tile-max-pixels", default=f"{DEFAULT_TILE_MAX_SIDE}x{DEFAULT_TILE_MAX_SIDE}",
              show_default=True, metavar="WxH|PIXELS",
              help="With --tile: largest image accepted when it is tiled (--max-pixels "
                   "still limits images that fit one tile).")
@click.option("--labels", type=click.Path(path_type=Path), default=None, metavar="FILE",
              help="Class names, one per line in class index order; as many as the model "
                   "has classes.  Stored in the export and served by it (a class_names "
                   "signature) [default: the checkpoint's own, Pascal VOC's for a 21-class "
                   "model, else none].")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable result.")
def export(checkpoint: Path | None, output: Path, version: int | None, overwrite: bool,
           no_verify: bool, no_warmup: bool, model_name: str, precision: str,
           min_agreement: float, probes: tuple[Path, ...], calibration: tuple[Path, ...],
           max_pixels: str, input_tensor: str | None, output_tensor: str | None,
           preprocess: str, input_size: str | None, tile: int | None, tile_overlap: int | None,
           tile_batch: int, tile_max_pixels: str, labels: Path | None, fallback_precision: str,
           int8_kernels: str, as_json: bool) -> None:
    """Export a DeepLab-v3 checkpoint as a numbered SavedModel version.

    CHECKPOINT is a seed training directory (model.ckpt* + data.json), its `checkpoint`
    state file, a checkpoint prefix, or a tfdeploy checkpoint (config.json).  Default:
    the bundled demo checkpoint.  It may also be a frozen graph: the DeepLab model zoo's
    frozen_inference_graph.pb, its folder or its .tar.gz, or any .pb with
    --input-tensor/--output-tensor; or a Keras model (.keras/.h5) or a SavedModel
    directory that maps images to logits or labels.

    \b
    Examples:
      tfdeploy export                                  # demo model -> models/deeplab/1
      tfdeploy export tboard_logs/16645/train -o serving/versions
      tfdeploy export ckpt/ --version 3 --overwrite --json
      tfdeploy export ckpt/ --precision bfloat16 --probe photos/
      tfdeploy export ckpt/ --precision int8 --calibration photos/ --probe held-out/
      tfdeploy export ckpt/ --precision int8 --int8-kernels portable  # TF Serving < 2.17
      tfdeploy export deeplabv3_mnv2_pascal_train_aug_2018_01_29.tar.gz
      tfdeploy export unet.keras --preprocess imagenet --input-size 256x256
      tfdeploy export my_saved_model/ --preprocess -1..1
      tfdeploy export ckpt/ --tile 513 --tile-overlap 64     # 6000x4000 photos, full size
      tfdeploy export unet.keras --labels classes.txt --precision bfloat16
    """
    from tfdeploy.api import export as run_export

    result = run_export(checkpoint, output, version=version, overwrite=overwrite,
                        verify=not no_verify, warmup=not no_warmup, model_name=model_name,
                        precision=precision, min_agreement=min_agreement / 100,
                        probes=list(probes), max_pixels=max_pixels,
                        calibration=list(calibration), input_tensor=input_tensor,
                        output_tensor=output_tensor, preprocess=preprocess,
                        input_size=input_size, tile=tile, tile_overlap=tile_overlap,
                        tile_batch=tile_batch, tile_max_pixels=tile_max_pixels,
                        labels=labels, fallback_precision=fallback_precision,
                        int8_kernels=int8_kernels, progress=progress_printer(as_json, "  {}..."))
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    emit(as_json, result.to_json(), result.summary())


@main.command(short_help="Versions, tags and signatures of exported models.")
@click.argument("path", type=click.Path(path_type=Path), default="models/deeplab")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable description.")
def inspect(path: Path, as_json: bool) -> None:
    """Show versions, tags and signatures of a model base path or one version.

    \b
    Examples:
      tfdeploy inspect models/deeplab
      tfdeploy inspect models/deeplab/2 --json
    """
    from tfdeploy.api import inspect as describe
    from tfdeploy.export.inspect import render

    info = describe(path)
    emit(as_json, info, render(info))
