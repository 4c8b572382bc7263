"""``tfdeploy predict`` and ``tfdeploy bench``: client commands (never import TensorFlow)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from tfdeploy.cli.app import main
from tfdeploy.client.defaults import DEFAULT_RETRIES, DEFAULT_RETRY_TIMEOUT, DEFAULT_TIMEOUT
from tfdeploy.errors import UserError
from tfdeploy.tfs.names import DEFAULT_MODEL_NAME

_server_option = click.option(
    "--server", "-s", multiple=True, metavar="HOST:PORT[,HOST:PORT...]",
    help="Server endpoint(s); several spread the load round robin. Default: the only "
         "running server `tfdeploy serve` started (several: pick one with --name), else "
         "localhost:8500 (gRPC) / localhost:8501 (REST).")
_name_option = click.option(
    "--name", default=None,
    help="The tfdeploy server to use (see `tfdeploy status`). Default: the only running one.")
_transport_option = click.option("--transport", type=click.Choice(["grpc", "rest"]),
                                  default="grpc", show_default=True)
_protocol_option = click.option(
    "--protocol", type=click.Choice(["v1", "v2"]), default="v1", show_default=True,
    help="v1: TF Serving's API; v2: the Open Inference Protocol (KServe v2), as the "
         "embedded server, Triton and KServe runtimes speak it; over gRPC or REST as "
         "--transport says.")
_model_option = click.option(
    "--model", "--model-name", "-m", "model_name", default=None, metavar="NAME",
    help="The model to use. Default: the only model the server serves (its model config "
         f"file's), else {DEFAULT_MODEL_NAME}.")
_label_option = click.option(
    "--label", default=None, metavar="NAME",
    help="A version label of the server's model config (e.g. stable) instead of a version "
         "number.")


def _version(ctx, param, value: str | None) -> int | None:
    """A version number; a word is most likely a label, so say where labels go."""
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a version number (for a version "
                                 f"label use --label {value})") from None


def _tls_options(fn):
    """--tls-ca, --tls-cert, --tls-key, --tls-server-name: gRPC over TLS / REST over
    HTTPS.  Kept in the context (not parameters) so every client command takes them the
    same way."""
    def keep(ctx, param, value):
        if value is not None:
            ctx.meta.setdefault("tls", {})[param.name] = value
        return value

    for flag, help_text in reversed((
            ("--tls-ca", "Speak TLS (gRPC) / HTTPS (REST), trusting this CA (PEM file)."),
            ("--tls-cert", "Client certificate (PEM) for servers that require one (mTLS)."),
            ("--tls-key", "Key of --tls-cert (PEM)."),
            ("--tls-server-name", "Name the server's certificate must carry, when it is "
                                  "not the address's host."))):
        fn = click.option(flag, default=None, expose_value=False, callback=keep,
                          metavar="NAME" if flag.endswith("name") else "FILE",
                          help=help_text)(fn)
    return fn


def _tls_config():
    """The TlsConfig the --tls-* options describe, or None (plain gRPC / HTTP)."""
    given = click.get_current_context().meta.get("tls")
    if not given:
        return None
    from tfdeploy.client.tls import TlsConfig

    return TlsConfig(ca=given.get("tls_ca"), cert=given.get("tls_cert"),
                     key=given.get("tls_key"), server_name=given.get("tls_server_name"))


def _retry_options(fn):
    """--retries / --retry-timeout: how long a request rides out an unavailable, hung or
    restarting server (defaults outlast a 10 s restart)."""
    fn = click.option("--retry-timeout", type=click.FloatRange(min=0),
                      default=DEFAULT_RETRY_TIMEOUT, show_default=True,
                      help="Seconds a request may spend on retries.")(fn)
    return click.option("--retries", type=click.IntRange(min=0), default=DEFAULT_RETRIES,
                        show_default=True,
                        help="Retries of a request that found its server unavailable, "
                             "timed out or was cancelled (to the next endpoint when "
                             "there are several).")(fn)


def _predictor(server, name, transport, timeout, retries, retry_timeout, model_name,
               signature, version=None, label=None, protocol="v1", **kw):
    """Connect to the endpoints the user named (or the running server) and read the
    model's signatures; library errors become one-line CLI errors."""
    from tfdeploy.client.predict import Client, PredictError
    from tfdeploy.runtime.manage import class_names, client_target, client_tls, target_record

    if version is not None and label is not None:
        raise UserError("give --version or --label, not both", param="label")
    addresses, model_name = client_target(server, transport, name, model_name)
    client = Client(addresses, transport, model=model_name, signature=signature,
                    version=version, label=label, timeout=timeout, retries=retries,
                    retry_timeout=retry_timeout, protocol=protocol,
                    tls=_tls_config() or client_tls(server, addresses, name, transport))
    client.class_names = class_names(target_record(server, addresses, name), model_name)
    try:
        return client.predictor(**kw)
    except PredictError as exc:
        raise UserError(exc.message + _how_to_fix(exc.cause, transport)) from None


def _how_to_fix(cause: str | None, transport: str) -> str:
    """The library says what went wrong; the CLI says which flag changes it."""
    other = "rest" if transport == "grpc" else "grpc"
    if cause == "wrong_transport":
        return f": use --transport {other}, or the server's {transport} port"
    if cause == "no_server":
        return (" Start one with `tfdeploy serve`, or point at one with --server HOST:PORT "
                "(`tfdeploy status` lists ours)")
    return ""


def _check_inputs(items) -> list[str]:
    """Before any network call.  Nothing given exists: an error.  Some missing: said at
    once, here only (the run skips them); returned, so the exit code is 1."""
    import glob

    from tfdeploy.client.predict import missing_inputs

    missing = [f"{item}: " + ("no file matches" if glob.has_magic(item)
                              else "no such file or directory")
               for item in missing_inputs(items)]
    if missing and len(missing) == len(items):
        raise UserError("no images found: " + "; ".join(missing))
    for line in missing:
        click.echo(line, err=True)
    return missing_inputs(items)


@main.command(short_help="Images -> segmentation mask PNGs via a running server.")
@click.argument("images", nargs=-1, required=True)
@_server_option
@_name_option
@_transport_option
@_protocol_option
@_model_option
@click.option("--signature", default=None,
              help="serving_default (encoded images) or predict_images (float pixels). "
                   "Default: serving_default when the model has it.")
@click.option("--version", "version", callback=_version, default=None, metavar="N",
              help="Model version [latest].")
@_label_option
@click.option("--output-dir", "-o", default="masks", show_default=True,
              type=click.Path(path_type=Path), help="Where <stem>.png masks go.")
@click.option("--overlay", is_flag=True, help="Also write <stem>.overlay.jpg previews.")
@click.option("--max-side", type=click.IntRange(min=16), default=None,
              help="Downsize images so the longer side is at most N before sending; "
                   "masks come back at the original size.")
@click.option("-j", "--concurrency", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--timeout", type=float, default=DEFAULT_TIMEOUT, show_default=True,
              help="Seconds one attempt may take at one endpoint (its deadline).")
@_retry_options
@_tls_options
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON document: per-image class pixel counts and a summary.")
def predict(images: tuple[str, ...], server, name, transport, protocol, model_name, signature,
            version, label, output_dir, overlay, max_side, concurrency, timeout, retries,
            retry_timeout, as_json) -> None:
    """Segment IMAGES (files, directories, globs) and write palette PNG masks.

    Mask pixel values are class indices, coloured with the Pascal VOC palette.  A file
    that cannot be read is reported and skipped; the exit code is then 1.

    A mask is OUTPUT_DIR/<stem>.png (directories keep their sub-folders).  Inputs with
    the same stem keep their whole name (tiny.jpg -> tiny.jpg.png); the summary lists
    them.  A run whose masks would replace one of its inputs is refused before any
    request.

    \b
    Examples:
      tfdeploy predict examples/scene_1.jpg
      tfdeploy predict photos/ -j 4 --overlay -o out/
      tfdeploy predict photo.jpg --name staging       # one of several servers
      tfdeploy predict photo.jpg --model seg_a --label stable
      tfdeploy predict 'shots/**/*.png' --transport rest --server 10.0.0.5:8501 --json
      tfdeploy predict photo.jpg --protocol v2 --server triton:8001
      tfdeploy predict photo.jpg --transport rest --protocol v2 --server triton:8000
    """
    import time

    from tfdeploy.client.predict import expand, output_dir_mistake, overwrites

    if mistake := output_dir_mistake(output_dir):
        raise UserError(f"--output-dir: {mistake}")
    missing = _check_inputs(images)
    some_missing = bool(missing)
    # a missing file was reported once, above: not again as a failed image
    jobs = [job for job in expand(images) if str(job.path) not in missing]
    if not jobs:
        raise UserError("no images found in " + " ".join(images))
    clashes = overwrites(jobs, output_dir, overlay)
    if clashes:
        raise UserError("nothing written: the masks would replace "
                        + "; ".join(clashes) + ". Choose another --output-dir.")
    predictor = _predictor(server, name, transport, timeout, retries, retry_timeout,
                           model_name, signature, version, label, protocol=protocol,
                           output_dir=output_dir,
                           overlay=overlay, max_side=max_side)
    results, started = [], time.perf_counter()
    with click.progressbar(length=len(jobs), label=f"predict ({predictor.signature})",
                           file=sys.stderr, show_pos=True) as bar:
        for result in predictor.run(jobs, concurrency):
            results.append(result)
            bar.update(1)
            if not result.ok:
                click.echo(f"\n{result.path}: {result.error}", err=True)
    # names only for JSON (asking the model is one more request its log would hold)
    summary = predictor.summary(results, time.perf_counter() - started, names=as_json)
    if as_json:
        predictor.name_classes(results)
        click.echo(json.dumps({"results": [r.__dict__ for r in results], "summary": summary},
                              indent=2))
    else:
        rate = summary["images_per_second"]
        click.echo(f"{summary['images']} images: {summary['ok']} ok, {summary['failed']} "
                   f"failed" + (f", {rate} img/s" if rate is not None else "")
                   + (f" -> {output_dir}/" if summary["ok"] else ""))
        for source, mask in summary["renamed"].items():
            click.echo(f"  {source} -> {mask} (same stem as another input)")
    if summary["failed"] or some_missing:
        sys.exit(1)


def _levels(ctx, param, text: str | None) -> list[int] | None:
    from tfdeploy.client.bench import parse_levels

    try:
        return parse_levels(text) if text is not None else None
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _rates(ctx, param, text: str | None) -> list[float] | None:
    from tfdeploy.client.bench import parse_rates

    try:
        return parse_rates(text) if text is not None else None
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@main.command(short_help="Latency percentiles and throughput of a server (perf_analyzer-like).")
@click.argument("images", nargs=-1)
@_server_option
@_name_option
@_transport_option
@_protocol_option
@_model_option
@_label_option
@click.option("--signature", default=None, help="Default: serving_default when present.")
@click.option("--concurrency", "-c", "concurrency", default=None, callback=_levels,
              metavar="1,4,8", help="Closed-loop concurrency levels [1,4,8].")
@click.option("--concurrency-range", "concurrency_range", default=None, callback=_levels,
              metavar="START:END[:STEP]", help="perf_analyzer's form of --concurrency.")
@click.option("--request-rate", "request_rate", default=None, callback=_rates,
              metavar="R[,R..]", help="Open loop: send R requests/s on a fixed schedule, "
                                      "per level.")
@click.option("--request-rate-range", "request_rate_range", default=None, callback=_rates,
              metavar="START:END[:STEP]", help="perf_analyzer's form of --request-rate.")
@click.option("--warmup", type=click.IntRange(min=0), default=None,
              help="Requests per level sent before measuring, not counted [5; 0 with -n].")
@click.option("--measurement-interval", "interval", type=click.FloatRange(min=0.05),
              default=2.0, show_default=True, help="Seconds per measurement window.")
@click.option("--stability-percentage", "stability", type=click.FloatRange(min=0.1),
              default=10.0, show_default=True,
              help="Stable = 3 windows' throughput and latency within this % of their mean.")
@click.option("--max-trials", type=click.IntRange(min=3), default=10, show_default=True,
              help="Windows per level before giving up on stability.")
@click.option("--duration", type=click.FloatRange(min=0.05), default=None,
              help="One fixed window of this many seconds per level (no stability search).")
@click.option("--requests", "-n", type=click.IntRange(min=1), default=None,
              help="One fixed window of N requests per level (no stability search).")
@click.option("--max-threads", type=click.IntRange(min=1), default=16, show_default=True,
              help="Open loop: most requests in flight.")
@click.option("--timeout", type=float, default=DEFAULT_TIMEOUT, show_default=True,
              help="Seconds one attempt may take at one endpoint (its deadline).")
@_retry_options
@_tls_options
@click.option("--csv", "csv_file", type=click.Path(path_type=Path), default=None,
              help="Also write the results as CSV (- for stdout).")
@click.option("--from-log", "from_log", default=None, metavar="LOGDIR",
              type=click.Path(path_type=Path),
              help="Send the images of a request log (see `tfdeploy requests`) instead.")
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")
def bench(images, server, name, transport, protocol, model_name, label, signature, concurrency,
          concurrency_range, request_rate, request_rate_range, warmup, interval, stability,
          max_trials, duration, requests, max_threads, timeout, retries, retry_timeout, csv_file,
          from_log, as_json) -> None:
    """Measure latency percentiles and throughput against a running server, the way
    perf_analyzer does: warm-up, then measurement windows until three agree.

    IMAGES (files, directories, globs; default: the bundled demo images) are sent in
    turn.  Each level is a closed loop of N clients (--concurrency) or an open loop at a
    fixed request rate (--request-rate).  The exit code is 1 if any request failed.

    \b
    Examples:
      tfdeploy bench
      tfdeploy bench photos/ -c 1,2,4,8,16 --json
      tfdeploy bench --concurrency-range 1:8:1 --csv results.csv
      tfdeploy bench --request-rate 10:40:10 --measurement-interval 5
      tfdeploy bench --signature predict_images --transport rest -n 50
      tfdeploy bench --protocol v2 --server triton:8001 -n 50
    """
    from tfdeploy.client import bench as bench_lib
    from tfdeploy.client.predict import PredictError
    from tfdeploy.demo import DEMO_IMAGES

    if request_rate and request_rate_range:
        raise UserError("give --request-rate or --request-rate-range, not both",
                        param="request_rate_range")
    request_rate = request_rate or request_rate_range
    if concurrency and concurrency_range:
        raise UserError("give --concurrency or --concurrency-range, not both",
                        param="concurrency_range")
    if request_rate and (concurrency or concurrency_range):
        raise UserError("a level is a concurrency or a request rate, not both",
                        param="request_rate")
    if duration is not None and requests is not None:
        raise UserError("give --duration or --requests, not both", param="requests")
    levels = concurrency or concurrency_range or [1, 4, 8]
    if warmup is None:  # -n N keeps meaning "exactly N requests per level"
        warmup = 0 if requests is not None else 5
    if from_log is not None and images:
        raise UserError("give IMAGES or --from-log, not both", param="from_log")
    skipped_names = None  # logged class_names requests left out (--from-log)
    try:
        if from_log is not None:
            logged = bench_lib.load_logged_inputs(str(from_log))
            inputs, skipped_names = logged.images, logged.class_names
        else:
            inputs = bench_lib.load_inputs(list(images) or [str(DEMO_IMAGES)])
    except PredictError as exc:
        raise UserError(str(exc)) from None
    predictor = _predictor(server, name, transport, timeout, retries, retry_timeout,
                           model_name, signature, label=label, protocol=protocol,
                           output_dir=None)

    # stdout carries one format: the table, or the CSV (--csv -), which then sends the
    # table to stderr, or the JSON (no table)
    table_err = str(csv_file) == "-"

    def show(r) -> None:
        if as_json:
            return
        click.echo(bench_lib.format_level(r), err=table_err)
        for sample in r.error_samples:
            click.echo(f"      error: {sample}", err=True)
        if len(r.endpoints) > 1:
            click.echo("      per endpoint: " + ", ".join(
                f"{k} {v}" for k, v in r.endpoints.items()), err=table_err)

    if skipped_names and not as_json:
        click.echo(f"skipped {skipped_names} logged class_names request"
                   f"{'s' if skipped_names != 1 else ''} (a client asks for class names "
                   "once, lazily: not traffic to measure)", err=True)
    if not as_json:
        click.echo(f"{bench_lib.describe_input(predictor, inputs)} over {transport} "
                   f"(protocol {protocol}) to "
                   f"{', '.join(predictor.transport.counts)}", err=table_err)
        mode = (f"fixed windows ({duration:g}s)" if duration else
                f"fixed windows ({requests} requests)" if requests else
                f"{interval:g}s windows until 3 agree within {stability:g}% "
                f"(at most {max_trials})")
        click.echo(f"warm-up {warmup} requests per level, then {mode}", err=True)
        click.echo(bench_lib.COLUMNS, err=table_err)
    results = bench_lib.run(predictor, inputs, concurrency=levels,
                            request_rates=request_rate or (), on_level=show, warmup=warmup,
                            interval=interval, stability=stability, max_trials=max_trials,
                            duration=duration, requests=requests, max_threads=max_threads)
    if csv_file is not None:
        text = bench_lib.to_csv(results)
        if str(csv_file) == "-":
            click.echo(text, nl=False)
        else:
            csv_file.write_text(text)
    if as_json:
        click.echo(json.dumps({"signature": predictor.signature, "transport": transport,
                               "protocol": protocol,
                               "images": len(inputs),
                               **({"skipped_class_names": skipped_names}
                                  if skipped_names is not None else {}),
                               "levels": [r.to_json() for r in results]}, indent=2))
    elif any(r.stable is False for r in results):
        click.echo("some levels did not stabilise: raise --measurement-interval or "
                   "--max-trials, or quieten the machine", err=True)
    if any(r.errors for r in results):
        sys.exit(1)
