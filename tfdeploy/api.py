"""The Python API: what the ``tfdeploy`` commands do, as functions (the CLI calls these).

Reached through the package (``tfdeploy.export``, ``tfdeploy.serve``, ...), which loads
this module, and what it needs, only when one of them is first used: ``import tfdeploy``
stays cheap and never imports TensorFlow; only ``export`` (and the embedded server's
process) does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tfdeploy.export.config import DEFAULT_MAX_PIXELS, DEFAULT_MIN_AGREEMENT, DEFAULT_PRECISION
from tfdeploy.export.tilespec import DEFAULT_TILE_BATCH, DEFAULT_TILE_MAX_PIXELS
from tfdeploy.tfs.names import DEFAULT_MODEL_NAME, GRPC_PORT, REST_PORT

if TYPE_CHECKING:
    from tfdeploy.client.tls import TlsConfig
    from tfdeploy.runtime.manage import Server

__all__ = ["bench", "export", "inspect", "logs", "manifest", "promote", "requests",
           "rollback", "serve", "servers", "stop", "ui"]

Progress = Callable[[str], None]


def export(checkpoint: str | Path | None = None, output: str | Path = "models/deeplab", *,
           version: int | None = None, overwrite: bool = False, verify: bool = True,
           warmup: bool = True, model_name: str = DEFAULT_MODEL_NAME,
           precision: str = DEFAULT_PRECISION, min_agreement: float = DEFAULT_MIN_AGREEMENT,
           probes: list[str | Path] = (), max_pixels: int | str = DEFAULT_MAX_PIXELS,
           calibration: list[str | Path] = (), input_tensor: str | None = None,
           output_tensor: str | None = None, preprocess: str = "0..255",
           input_size: str | None = None, tile: int | None = None,
           tile_overlap: int | None = None, tile_batch: int = DEFAULT_TILE_BATCH,
           tile_max_pixels: int | str = DEFAULT_TILE_MAX_PIXELS,
           labels: str | Path | None = None, fallback_precision: str = "auto",
           int8_kernels: str = "fused", progress: Progress | None = None):
    """Export a DeepLab-v3 checkpoint (default: the bundled demo) as version ``version``
    (default: highest existing + 1) of the model base path ``output``.

    Returns an ``ExportResult`` (``.version``, ``.path``, ``.signatures``, ...).  Raises
    ``tfdeploy.UserError`` for unusable input (nothing is written then) and
    ``tfdeploy.ExportError`` when the written model does not match the checkpoint.
    ``precision`` (``float32``, ``bfloat16``, ``float16``, ``int8``) is the dtype of the
    stored weights and convolutions; ``int8`` takes its activation ranges from the images
    in ``calibration`` (files or directories; default: the probe images); verification
    ``fallback_precision`` (``auto``, ``float32``, ``bfloat16``) is what the blocks an
    int8 export keeps out of int8 compute in (``auto``: bfloat16 where this CPU has
    native bfloat16 kernels, else float32); ``int8_kernels`` is the oneDNN kernel set
    an int8 export runs on (``fused``, the default and fastest, needs TensorFlow 2.17 or
    later in the server; ``portable`` runs in any TensorFlow 2 built with oneDNN, 5-10%
    slower); verification
    fails below ``min_agreement`` (a fraction) of mask pixels equal to the float32
    model's on any probe image (synthetic, the demo images, and the files or directories
    in ``probes``); ``result.warnings`` says when this machine cannot run the precision
    fast (and which servers can run an int8 export).  ``max_pixels`` (a count, or
    ``"WIDTHxHEIGHT"``) is the largest image the signatures accept: checked in the graph
    from the image header before decoding, so decompression bombs are refused by any
    server.  ``checkpoint`` may also be a frozen graph (the DeepLab model zoo's
    ``frozen_inference_graph.pb``, its folder or ``.tar.gz``): wrapped unchanged and
    verified to give its masks on every probe pixel; ``input_tensor``/``output_tensor``
    (default ``ImageTensor:0``/``SemanticPredictions:0``) name other graphs' tensors.
    It may be a Keras model file (``.keras``/``.h5``) or a SavedModel directory whose
    signature maps images to logits or labels: ``preprocess`` (``0..255``, ``0..1``,
    ``-1..1``, ``imagenet``) makes its input from pixels, ``input_size`` (``"HxW"``) is
    the size it needs if any; verified to give the source model's masks on every pixel.
    ``tile`` (pixels) segments images larger than a tile in overlapping tiles
    (``tile_overlap`` pixels, default an eighth of the tile; ``tile_batch``
    at a time) whose logits are blended inside
    the graph, for images up to ``tile_max_pixels`` (a count or ``"WIDTHxHEIGHT"``);
    images that fit a tile get exactly the untiled masks.
    ``labels`` is a file of class names (one per line, one per class): stored in the
    export and served by it as the ``class_names`` signature (default: the checkpoint's
    own names, Pascal VOC's for a 21-class model).  ``precision`` applies to a Keras
    model too (bfloat16/float16); a frozen graph or SavedModel is served as made.
    ``progress`` gets one short line per step.
    """
    from tfdeploy.demo import DEMO_CHECKPOINT
    from tfdeploy.errors import UserError
    from tfdeploy.export.preflight import check_inputs
    from tfdeploy.export.tilespec import check_tiling
    from tfdeploy.tfimport import quiet_import_tensorflow

    # a typo is reported at once, not after the seconds TensorFlow takes to import
    pixels = check_inputs(checkpoint if checkpoint is not None else DEMO_CHECKPOINT, output,
                          version, precision, min_agreement, list(probes), max_pixels)
    tile_pixels = _tile_pixels(tile_max_pixels)
    problem = check_tiling(tile, tile_overlap, tile_batch, tile_pixels)
    if problem:
        raise UserError(problem)
    if labels is not None:
        from tfdeploy.export.labels import read_labels

        read_labels(labels)  # a missing or empty file: before importing TensorFlow
    if precision == "int8":
        # its kernels are oneDNN's, which TensorFlow leaves off on CPUs without VNNI,
        # AVX512_BF16 or AMX (tfs/onednn.py): ask before TensorFlow starts
        from tfdeploy.tfs.onednn import turn_on_if_unset

        turn_on_if_unset()
    quiet_import_tensorflow()
    from tfdeploy.export.writer import export as run_export

    return run_export(checkpoint, output, version=version, overwrite=overwrite,
                      do_verify=verify, do_warmup=warmup, model_name=model_name,
                      precision=precision, min_agreement=min_agreement, probes=list(probes),
                      max_pixels=pixels, calibration=list(calibration),
                      input_tensor=input_tensor, output_tensor=output_tensor,
                      preprocess=preprocess, input_size=input_size, tile=tile,
                      tile_overlap=tile_overlap, tile_batch=tile_batch,
                      tile_max_pixels=tile_pixels, labels=labels,
                      fallback_precision=fallback_precision, int8_kernels=int8_kernels,
                      progress=progress)


def _tile_pixels(value: int | str) -> int:
    from tfdeploy.errors import UserError
    from tfdeploy.export.config import parse_max_pixels

    try:
        return parse_max_pixels(value)
    except ValueError as exc:
        raise UserError(f"--tile-max-pixels: {exc}") from None


def serve(base: str | Path | None = "models/deeplab", *, runtime: str = "auto",
          name: str | None = None, model_name: str = DEFAULT_MODEL_NAME,
          grpc_port: int = GRPC_PORT, rest_port: int = REST_PORT, host: str = "127.0.0.1",
          timeout: float = 180, progress: Progress | None = None, **options) -> Server:
    """Start a model server for ``base`` in the background; return once its models are
    AVAILABLE (a base path with nothing to load fails at once, with the server's log).

    ``runtime``: ``auto`` (docker when an engine and a serving image are there, else
    ``tensorflow_model_server`` from PATH, else the embedded server), ``docker``,
    ``native`` or ``embedded``.  Port 0 picks a free port.  ``options`` are the other
    fields of ``tfdeploy.runtime.base.ServeSpec``: ``model_config_file`` (every model in
    it must come up; re-read every ``config_poll`` seconds, default 5, 0 = never),
    ``enable_batching``, ``batching_parameters_file``, ``monitoring_config_file``,
    ``gpu``, ``gpus``, ``image``, ``restart``, ``poll_seconds``, ``extra_flags``
    (tensorflow_model_server flags), ``env``, and docker's ``cpus``, ``memory``,
    ``volumes``, ``user``, ``pids_limit``.  An option the chosen runtime would ignore
    raises ``UserError``.  TLS: ``ssl_config_file`` (tensorflow_model_server's SSLConfig
    text: gRPC over TLS, and REST over HTTPS where the server is tfdeploy-model-server),
    ``tls_ca`` (the CA that signed its certificate; default: the config's ``custom_ca``
    or the certificate itself, whichever verifies it), ``tls_cert``/``tls_key`` (a
    client certificate, required when the config has ``client_verify``) and
    ``tls_server_name``; the record keeps them, so ``status``, ``predict --name``,
    ``bench``, ``ui`` and ``Server.client()`` speak TLS without options.

    The returned ``Server`` has ``.grpc_address``, ``.rest_url``, ``.client()`` and
    ``.stop()``; as a context manager it stops the server at the end of the block.
    """
    from tfdeploy.runtime import manage
    from tfdeploy.runtime.base import ServeSpec
    from tfdeploy.runtime.manage import Server

    if base is None and options.get("model_config_file") is None:
        base = "models/deeplab"
    spec = ServeSpec(base_path=Path(base) if base is not None else None,
                     model_name=model_name, name=name or "", host=host,
                     grpc_port=grpc_port, rest_port=rest_port, **options)
    record, why, versions = manage.serve(spec, runtime, timeout, progress)
    return Server(record, why, versions)


def inspect(path: str | Path = "models/deeplab") -> dict[str, Any]:
    """What ``tfdeploy inspect`` shows, as a dict: for a model base path (every version)
    or one version directory, each version's file and total sizes, precision, warm-up
    file, who exported it, and its meta graphs' tags and signatures (dtypes, shapes).
    Reads the protobuf without TensorFlow.  A path with no SavedModel raises
    ``UserError``."""
    from tfdeploy.export.inspect import describe

    return describe(path)


def logs(name: str | None = None, *, follow: bool = False, tail: int = 100
         ) -> Iterator[str]:
    """The log lines of the only running server, or of ``name``: the last ``tail``, then,
    with ``follow``, new ones as they come (until the server stops or the caller stops
    iterating)."""
    from tfdeploy.runtime import manage

    return manage.logs(name, follow=follow, tail=tail)


def manifest(target: str, source: str | Path = "models/deeplab", *,
             output_dir: str | Path = "deploy", **options) -> dict[str, Any]:
    """Write ready-to-apply files serving ``source`` (a local base path or a gs:// / s3://
    URI) with the official TF Serving image: ``target`` ``"k8s"`` (Deployment, Service,
    PodDisruptionBudget, HorizontalPodAutoscaler, ConfigMap), ``"kserve"``
    (InferenceService) or ``"compose"``.

    ``options`` are the fields of ``tfdeploy.deploy.manifests.ManifestSpec`` (the
    ``tfdeploy manifest`` flags with underscores: ``replicas``, ``gpu``, ``pvc``,
    ``fill_from``, ``service_account``, ``node_selector`` as a dict, ...).  An option
    ``target`` cannot carry out raises ``UserError`` naming it; nothing is written then.
    Returns ``files``, ``image``, ``next_steps`` (the commands to run next) and, for
    compose, the replicas' ``grpc_endpoints`` and ``rest_endpoints``.
    """
    from dataclasses import fields

    from tfdeploy.deploy.manifests import ManifestSpec, generate

    known = {f.name for f in fields(ManifestSpec)} - {"source"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"manifest() got an unexpected keyword argument {unknown[0]!r} "
                        f"(options: {', '.join(sorted(known))})")
    return generate(target, ManifestSpec(source=str(source), **options), Path(output_dir))


def servers(name: str | None = None) -> list[dict]:
    """The servers tfdeploy started (all, or ``name``): what ``tfdeploy status`` shows."""
    from tfdeploy.runtime import manage

    return manage.status(name)


def stop(name: str | None = None, all_servers: bool = False, timeout: float = 30
         ) -> list[str]:
    """Stop the only server, ``name``, or all of them; returns the names stopped."""
    from tfdeploy.runtime import manage

    return manage.stop(name, all_servers, timeout)


def bench(client, images=None, *, concurrency=(1,), request_rates=(), **options) -> list:
    """Measure a server like perf_analyzer: warm-up, stabilised measurement windows,
    latency percentiles and throughput per concurrency level or request rate.

    ``client`` is a ``tfdeploy.Client`` (or a ``Server``: its gRPC client); ``images``
    are files, directories or globs (default: the bundled demo images).  ``options``:
    ``warmup``, ``interval`` (window seconds), ``stability`` (percent), ``max_trials``,
    ``duration`` or ``requests`` (one fixed window), ``max_threads`` (open loop).
    Returns one ``tfdeploy.client.bench.LevelResult`` per level (``.to_json()``, and
    ``tfdeploy.client.bench.to_csv(results)``).
    """
    from tfdeploy.client import bench as bench_lib
    from tfdeploy.demo import DEMO_IMAGES

    if hasattr(client, "grpc_address") and not hasattr(client, "predictor"):
        client = client.client()
    items = [str(i) for i in ([images] if isinstance(images, (str, Path)) else images or [])]
    inputs = bench_lib.load_inputs(items or [str(DEMO_IMAGES)])
    return bench_lib.run(client.predictor(), inputs, concurrency=concurrency,
                         request_rates=request_rates, **options)


def ui(server: str | None = None, name: str | None = None, *, model: str | None = None,
       host: str = "127.0.0.1", port: int = 0, classes: str = "auto",
       max_upload_mb: float = 32, open_browser: bool = False,
       request_log: str | Path | None = None,
       ready: Callable[[str], None] | None = None) -> None:
    """Serve the ``tfdeploy ui`` page until interrupted (Ctrl-C): pick or drop images,
    see their masks, compare two versions or labels, browse logged requests.

    The page talks to one TF Serving REST endpoint: ``server`` (``host:port``, ours or
    tensorflow_model_server), else the server ``tfdeploy serve`` started called ``name``,
    else the only one running, else ``localhost:8501``.  ``model`` defaults to the
    server's model(s).  The page listens on ``host``:``port`` (0: a free port) and
    ``ready(url)`` is called once it does.  ``classes``: ``auto`` (from the served export
    when known), ``voc``, ``demo`` or comma-separated names.  Uploads larger than
    ``max_upload_mb`` are refused; none is written to disk.  ``request_log`` (a log
    directory, ``filename_prefix`` or file; default: the logs of a recorded server's
    ``logging_config``) adds a view of the logged requests with their logged masks,
    each of which can be run again on the current version; the log is only read.
    """
    from tfdeploy.webui.server import run

    run(server, name, model=model, host=host, port=port, classes=classes,
        max_upload_mb=max_upload_mb, open_browser=open_browser, request_log=request_log,
        ready=ready)


def promote(model: str, version: int, *, label: str = "stable", sample=None,
            min_agreement: float = 0.95, server: str | None = None, name: str | None = None,
            config: str | Path | None = None, dry_run: bool = False,
            progress: Progress | None = None, tls: TlsConfig | None = None):
    """Point the version label ``label`` of ``model`` at ``version``, once its masks agree
    with those of the version the label points at now.

    Both versions (by number) segment the ``sample`` images (files, directories, globs;
    default: the bundled demo images); the result has pixel agreement per image and
    pooled, per-class IoU between the two versions' masks (``client.compare``) and each
    version's p50 latency.  Any image below ``min_agreement`` (a fraction) raises
    ``tfdeploy.rollout.promote.PromoteRefused`` (its ``.result`` names the images and
    classes); otherwise the label moves with HandleReloadConfigRequest, and a model config
    file the server polls is rewritten atomically so the next poll keeps it.  ``version``
    must be AVAILABLE (a ``UserError`` says so otherwise).  A label not set yet is set
    without comparison.  ``dry_run`` compares only.

    The server: ``name`` (one ``tfdeploy serve`` started; default the only one running),
    or ``server`` (``host:port`` of any TF Serving gRPC API) with ``config``, the model
    config file it runs (HandleReloadConfigRequest replaces the whole config).  TLS:
    ``tls`` (a ``tfdeploy.client.tls.TlsConfig``) for a server that speaks it; a server
    ``tfdeploy serve --ssl-config-file`` started needs none (its record has it, and its
    local reload socket is under TLS too).  Returns a ``PromoteResult`` (``.to_json()``);
    the version the label left is recorded for ``rollback``.
    """
    from tfdeploy.rollout.promote import promote as run

    return run(model, version, label=label, sample=sample, min_agreement=min_agreement,
               server=server, name=name, config=config, dry_run=dry_run, progress=progress,
               tls=tls)


def rollback(model: str, *, label: str = "stable", server: str | None = None,
             name: str | None = None, config: str | Path | None = None,
             tls: TlsConfig | None = None) -> dict:
    """Point ``label`` of ``model`` back at the version it pointed at before the last
    ``promote`` on this server (or config file), without comparing.  Returns ``model``,
    ``label``, ``version`` (now), ``from`` (before).  ``UserError`` when no promote is
    recorded or that version is no longer AVAILABLE.  ``tls`` as for ``promote``."""
    from tfdeploy.rollout.promote import rollback as run

    return run(model, label=label, server=server, name=name, config=config, tls=tls)


def requests(log: str | Path | None = None, *, export_dir: str | Path | None = None,
             masks: bool = True, name: str | None = None) -> dict:
    """The requests logged in ``log`` (a request-log directory, a ``filename_prefix``, or
    one of its TFRecord files; also reads warmup files): ``{"requests": [...],
    "exported": [...]}``.  Without ``log``: the logs of the server ``tfdeploy serve``
    started (``name``, or the only one running), from its models' ``logging_config``
    (``request_log_of``).

    Each request has ``time`` (ISO 8601, UTC), ``kind``, ``model``, ``version``,
    ``signature``, ``inputs`` (key -> shape), ``image_sizes`` and ``response`` (whether
    it was logged).  With ``export_dir`` the logged images go to ``export_dir/images``
    and, where the response was logged and ``masks``, masks (palette PNG) to
    ``masks/`` and overlays to ``overlays/``; ``exported`` lists them.  Reading needs no
    TensorFlow.  ``UserError`` for a path that is missing or not a request log.
    """
    from tfdeploy.client import request_log
    from tfdeploy.errors import UserError

    if log is not None and name is not None:
        raise UserError("give a log's path or --name, not both", param="name")
    logs = [Path(log)] if log is not None else request_log_of(name)
    listed, exported = [], []
    try:
        for one in logs:
            listed += [e.to_json() for e in request_log.entries(one)]
            if export_dir is not None:
                exported += request_log.export(one, export_dir, masks=masks)
    except request_log.LogError as exc:
        raise UserError(str(exc)) from None
    return {"requests": listed, "exported": exported}


def request_log_of(name: str | None = None) -> list[Path]:
    """The request logs (``filename_prefix`` of each model's ``logging_config``) of the
    server ``tfdeploy serve`` started: ``name`` (running, dead, or stopped by
    ``tfdeploy stop``, whose record keeps where its logs are), or the only one
    running.  ``UserError``
    when there is no such server or it logs no requests."""
    from tfdeploy.errors import UserError
    from tfdeploy.runtime.manage import choose_server, find_or_stopped, request_logs

    # by name, a stopped server's log is still there to read (its record is kept)
    record = find_or_stopped(name) if name is not None else choose_server(None)
    if record is None:
        raise UserError("no server that `tfdeploy serve` started is running: give the "
                        "log's path", param="name")
    logs = request_logs(record)
    if not logs:
        raise UserError(f"server {record.name!r} logs no requests: no model in its model "
                        "config file has a logging_config (the embedded runtime only)",
                        param="name")
    return list(logs.values())
