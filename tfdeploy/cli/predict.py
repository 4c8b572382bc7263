"""``tfdeploy predict`` and ``tfdeploy bench``: client commands (never import TensorFlow)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from tfdeploy.cli.app import main
from tfdeploy.errors import UserError
from tfdeploy.tfs.names import DEFAULT_MODEL_NAME

_server_option = click.option(
    "--server", "-s", multiple=True, metavar="HOST:PORT[,HOST:PORT...]",
    help="Server endpoint(s); several spread the load round robin. Default: the server "
         "`tfdeploy serve` started, else localhost:8500 (gRPC) / localhost:8501 (REST).")
_name_option = click.option(
    "--name", default=None,
    help="The tfdeploy server to use (see `tfdeploy status`). Default: the only running one.")
_transport_option = click.option("--transport", type=click.Choice(["grpc", "rest"]),
                                  default="grpc", show_default=True)


def _predictor(server, name, transport, timeout, model_name, signature, version=None, **kw):
    """Connect to the endpoints the user named (or the running server) and read the
    model's signatures; library errors become one-line CLI errors."""
    from tfdeploy.client.predict import Client, PredictError
    from tfdeploy.runtime.manage import client_endpoints

    client = Client(client_endpoints(server, transport, name), transport, model=model_name,
                    signature=signature, version=version, timeout=timeout)
    try:
        return client.predictor(**kw)
    except PredictError as exc:
        raise UserError(str(exc)) from None


def _check_inputs(items) -> None:
    """Before any network call: every argument must name something."""
    from tfdeploy.client.predict import missing_inputs

    missing = missing_inputs(items)
    if missing:
        raise UserError(f"no such file or directory: {', '.join(missing)}")


@main.command(short_help="Images -> segmentation mask PNGs via a running server.")
@click.argument("images", nargs=-1, required=True)
@_server_option
@_name_option
@_transport_option
@click.option("--model-name", "-m", default=DEFAULT_MODEL_NAME, show_default=True)
@click.option("--signature", default=None,
              help="serving_default (encoded images) or predict_images (float pixels). "
                   "Default: serving_default when the model has it.")
@click.option("--version", "version", type=int, default=None, help="Model version [latest].")
@click.option("--output-dir", "-o", default="masks", show_default=True,
              type=click.Path(path_type=Path), help="Where <stem>.png masks go.")
@click.option("--overlay", is_flag=True, help="Also write <stem>.overlay.jpg previews.")
@click.option("--max-side", type=click.IntRange(min=16), default=None,
              help="Downsize images so the longer side is at most N before sending; "
                   "masks come back at the original size.")
@click.option("-j", "--concurrency", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--timeout", type=float, default=60.0, show_default=True,
              help="Seconds per request.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON document: per-image class pixel counts and a summary.")
def predict(images: tuple[str, ...], server, name, transport, model_name, signature, version,
            output_dir, overlay, max_side, concurrency, timeout, as_json) -> None:
    """Segment IMAGES (files, directories, globs) and write palette PNG masks.

    Mask pixel values are class indices, coloured with the Pascal VOC palette.  A file
    that cannot be read is reported and skipped; the exit code is then 1.

    \b
    Examples:
      tfdeploy predict examples/scene_1.jpg
      tfdeploy predict photos/ -j 4 --overlay -o out/
      tfdeploy predict photo.jpg --name staging       # one of several servers
      tfdeploy predict 'shots/**/*.png' --transport rest --server 10.0.0.5:8501 --json
    """
    import time

    from tfdeploy.client.predict import expand

    _check_inputs(images)
    jobs = expand(images)
    if not jobs:
        raise UserError("no images found in " + " ".join(images))
    predictor = _predictor(server, name, transport, timeout, model_name, signature, version,
                           output_dir=output_dir, overlay=overlay, max_side=max_side)
    results, started = [], time.perf_counter()
    with click.progressbar(length=len(jobs), label=f"predict ({predictor.signature})",
                           file=sys.stderr, show_pos=True) as bar:
        for result in predictor.run(jobs, concurrency):
            results.append(result)
            bar.update(1)
            if not result.ok:
                click.echo(f"\n{result.path}: {result.error}", err=True)
    summary = predictor.summary(results, time.perf_counter() - started)
    if as_json:
        click.echo(json.dumps({"results": [r.__dict__ for r in results], "summary": summary},
                              indent=2))
    else:
        rate = summary["images_per_second"]
        click.echo(f"{summary['images']} images: {summary['ok']} ok, {summary['failed']} "
                   f"failed" + (f", {rate} img/s" if rate is not None else "")
                   + (f" -> {output_dir}/" if summary["ok"] else ""))
    if summary["failed"]:
        sys.exit(1)


def _levels(ctx, param, text: str) -> list[int]:
    from tfdeploy.client.bench import parse_levels

    try:
        return parse_levels(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@main.command(short_help="Latency percentiles and throughput of a server.")
@click.argument("image", required=False, type=click.Path(path_type=Path))
@_server_option
@_transport_option
@click.option("--model-name", "-m", default=DEFAULT_MODEL_NAME, show_default=True)
@click.option("--signature", default=None, help="Default: serving_default when present.")
@click.option("--concurrency", "-c", default="1,4,8", show_default=True, callback=_levels,
              help="Comma-separated concurrency levels.")
@click.option("--duration", type=float, default=None, help="Seconds per level [10].")
@click.option("--requests", "-n", type=click.IntRange(min=1), default=None,
              help="Requests per level (instead of --duration).")
@click.option("--timeout", type=float, default=60.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")
def bench(image, server, transport, model_name, signature, concurrency, duration, requests,
          timeout, as_json) -> None:
    """Measure latency percentiles and throughput against a running server.

    IMAGE defaults to the first demo image.  Each level is a closed loop of N concurrent
    clients.

    \b
    Examples:
      tfdeploy bench
      tfdeploy bench photo.jpg -c 1,2,4,8,16 --duration 30 --json
      tfdeploy bench --signature predict_images --transport rest -n 50
    """
    from tfdeploy.client import images as image_io
    from tfdeploy.client.bench import COLUMNS, describe_input, format_level, run_level
    from tfdeploy.demo import demo_images

    if duration is None and requests is None:
        duration = 10.0
    path = image or demo_images()[0]
    try:
        loaded = image_io.load(path)
    except image_io.BadImage as exc:
        raise UserError(f"{path}: {exc}") from None
    predictor = _predictor(server, transport, timeout, model_name, signature,
                           output_dir=None)
    results = []
    if not as_json:
        click.echo(f"{describe_input(predictor, loaded)} over {transport} to "
                   f"{', '.join(predictor.transport.counts)}")
        click.echo(COLUMNS)
    for level in concurrency:
        r = run_level(predictor, loaded, level, duration, requests)
        results.append(r)
        if not as_json:
            click.echo(format_level(r))
            for sample in r.error_samples:
                click.echo(f"      error: {sample}", err=True)
            if len(r.endpoints) > 1:
                click.echo("      per endpoint: " + ", ".join(
                    f"{k} {v}" for k, v in r.endpoints.items()))
    if as_json:
        click.echo(json.dumps({"signature": predictor.signature, "transport": transport,
                               "levels": [r.__dict__ for r in results]}, indent=2))
    if any(r.errors for r in results):
        sys.exit(1)
