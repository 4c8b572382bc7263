"""The ``tfdeploy`` command line: parse, call the library, print.  No logic here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from tfdeploy.errors import UserError
from tfdeploy.export.config import PRECISIONS


class _Group(click.Group):
    """Turns UserError into one line on stderr and its exit code, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tfdeploy")
def main() -> None:
    """DeepLab-v3 checkpoint -> TensorFlow Serving -> segmentation masks.

    \b
      tfdeploy export              checkpoint -> models/deeplab/<N>/ SavedModel
      tfdeploy serve [--gpu]       serve it (docker, native or embedded server)
      tfdeploy predict image.jpg   write its segmentation mask (palette PNG)
      tfdeploy stop

    Run `tfdeploy COMMAND --help` for a command's options and examples.
    """


def _emit(as_json: bool, payload: dict, text: str) -> None:
    click.echo(json.dumps(payload, indent=2) if as_json else text)


@main.command(short_help="Checkpoint -> numbered, verified SavedModel version.")
@click.argument("checkpoint", required=False, type=click.Path(path_type=Path))
@click.option("--output", "-o", default="models/deeplab", show_default=True,
              type=click.Path(path_type=Path), help="Model base path (versions go below it).")
@click.option("--version", "version", type=int, default=None,
              help="Version number to write [default: highest existing + 1].")
@click.option("--overwrite", is_flag=True, help="Replace the version if it exists.")
@click.option("--no-verify", is_flag=True, help="Skip reloading and comparing the export.")
@click.option("--no-warmup", is_flag=True, help="Do not write warmup requests.")
@click.option("--model-name", default="deeplab", show_default=True,
              help="Model name used in the warmup requests.")
@click.option("--precision", type=click.Choice(PRECISIONS),
              default="float32", show_default=True,
              help="Dtype of the stored weights and convolutions (logits stay float32). "
                   "bfloat16 for CPUs with AVX512_BF16/AMX, float16 for GPUs.")
@click.option("--min-agreement", type=click.FloatRange(0, 100), default=99.0,
              show_default=True, metavar="PERCENT",
              help="Fail unless, on every probe image, this percentage of mask pixels "
                   "matches the float32 checkpoint model.")
@click.option("--probe", "probes", multiple=True, type=click.Path(path_type=Path),
              help="Extra verification images (files or directories), e.g. photographs "
                   "like your traffic.  Always used: a synthetic probe and examples/.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable result.")
def export(checkpoint: Path | None, output: Path, version: int | None, overwrite: bool,
           no_verify: bool, no_warmup: bool, model_name: str, precision: str,
           min_agreement: float, probes: tuple[Path, ...], as_json: bool) -> None:
    """Export a DeepLab-v3 checkpoint as a numbered SavedModel version.

    CHECKPOINT is a seed training directory (model.ckpt* + data.json), its `checkpoint`
    state file, a checkpoint prefix, or a tfdeploy checkpoint (config.json).  Default:
    the bundled demo checkpoint.

    \b
    Examples:
      tfdeploy export                                  # demo model -> models/deeplab/1
      tfdeploy export tboard_logs/16645/train -o serving/versions
      tfdeploy export ckpt/ --version 3 --overwrite --json
      tfdeploy export ckpt/ --precision bfloat16 --probe photos/
    """
    from tfdeploy.demo.scenes import DEMO_CHECKPOINT

    if checkpoint is None:
        checkpoint = DEMO_CHECKPOINT
        if not checkpoint.is_dir():
            raise UserError(f"demo checkpoint not found at {checkpoint}; pass CHECKPOINT")
    from tfdeploy.tfimport import quiet_import_tensorflow

    quiet_import_tensorflow()
    from tfdeploy.export.writer import export as run_export

    progress = None if as_json else (lambda msg: click.echo(f"  {msg}...", err=True))
    result = run_export(checkpoint, output, version=version, overwrite=overwrite,
                        do_verify=not no_verify, do_warmup=not no_warmup,
                        model_name=model_name, progress=progress, precision=precision,
                        min_agreement=min_agreement / 100, probes=list(probes))
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    check = (f"verified on {len(result.agreement['images'])} images (pixel agreement with "
             f"float32 {result.pixel_agreement:.2%}, worst image "
             f"{result.min_pixel_agreement:.2%}; max logit diff "
             f"{result.max_abs_logit_diff:.2g})" if result.verified else "not verified")
    text = (f"{result.path}\n"
            f"exported {result.backbone} ({result.format} checkpoint, {result.num_classes} "
            f"classes, OS{result.output_stride}, {result.precision}) as version {result.version}"
            f"{' (replaced)' if result.replaced else ''}: signatures "
            f"{', '.join(result.signatures)}; {result.warmup_records} warmup records; "
            f"{check}; {result.seconds:.1f}s")
    _emit(as_json, result.to_json(), text)


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
    from tfdeploy.export.inspect import describe, render

    info = describe(path)
    _emit(as_json, info, render(info))


def _transport(server: tuple[str, ...], transport: str, timeout: float):
    from tfdeploy.client.endpoints import resolve_endpoints
    from tfdeploy.client.transport import GrpcTransport, RestTransport

    addresses = resolve_endpoints(server, transport)
    cls = GrpcTransport if transport == "grpc" else RestTransport
    return cls(addresses, timeout=timeout)


_server_option = click.option(
    "--server", "-s", multiple=True, metavar="HOST:PORT[,HOST:PORT...]",
    help="Server endpoint(s); several spread the load round robin. Default: the server "
         "`tfdeploy serve` started, else localhost:8500 (gRPC) / localhost:8501 (REST).")
_transport_option = click.option("--transport", type=click.Choice(["grpc", "rest"]),
                                  default="grpc", show_default=True)


@main.command(short_help="Images -> segmentation mask PNGs via a running server.")
@click.argument("images", nargs=-1, required=True)
@_server_option
@_transport_option
@click.option("--model-name", "-m", default="deeplab", show_default=True)
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
def predict(images: tuple[str, ...], server, transport, model_name, signature, version,
            output_dir, overlay, max_side, concurrency, timeout, as_json) -> None:
    """Segment IMAGES (files, directories, globs) and write palette PNG masks.

    Mask pixel values are class indices, coloured with the Pascal VOC palette.  A file
    that cannot be read is reported and skipped; the exit code is then 1.

    \b
    Examples:
      tfdeploy predict examples/scene_1.jpg
      tfdeploy predict photos/ -j 4 --overlay -o out/
      tfdeploy predict 'shots/**/*.png' --transport rest --server 10.0.0.5:8501 --json
    """
    import time as _time

    from tfdeploy.client.predict import PredictError, Predictor, expand

    jobs = expand(images)
    if not jobs:
        raise UserError("no images found in " + " ".join(images))
    client = _transport(server, transport, timeout)
    try:
        predictor = Predictor(client, model_name, signature, version, output_dir, overlay,
                              max_side)
    except PredictError as exc:
        raise UserError(str(exc)) from None
    results, started = [], _time.perf_counter()
    with click.progressbar(length=len(jobs), label=f"predict ({predictor.signature})",
                           file=sys.stderr, show_pos=True) as bar:
        for result in predictor.run(jobs, concurrency):
            results.append(result)
            bar.update(1)
            if not result.ok:
                click.echo(f"\n{result.path}: {result.error}", err=True)
    summary = predictor.summary(results, _time.perf_counter() - started)
    failed = summary["failed"]
    if as_json:
        click.echo(json.dumps({"results": [r.__dict__ for r in results], "summary": summary},
                              indent=2))
    else:
        click.echo(f"{summary['images']} images: {summary['ok']} ok, {failed} failed, "
                   f"{summary['images_per_second']} img/s -> {output_dir}/")
    if failed:
        sys.exit(1)


def _levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter("use comma-separated integers, e.g. 1,4,8") from None
    if not levels or min(levels) < 1:
        raise click.BadParameter("concurrency levels must be >= 1")
    return levels


@main.command(short_help="Latency percentiles and throughput of a server.")
@click.argument("image", required=False, type=click.Path(path_type=Path))
@_server_option
@_transport_option
@click.option("--model-name", "-m", default="deeplab", show_default=True)
@click.option("--signature", default=None, help="Default: serving_default when present.")
@click.option("--concurrency", "-c", default="1,4,8", show_default=True,
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
    from tfdeploy.client.bench import describe_input, run_level
    from tfdeploy.client.predict import PredictError, Predictor

    levels = _levels(concurrency)
    if duration is None and requests is None:
        duration = 10.0
    path = image or Path(__file__).resolve().parents[1] / "examples" / "scene_1.jpg"
    try:
        loaded = image_io.load(path)
    except image_io.BadImage as exc:
        raise UserError(f"{path}: {exc}") from None
    client = _transport(server, transport, timeout)
    try:
        predictor = Predictor(client, model_name, signature, output_dir=None)
    except PredictError as exc:
        raise UserError(str(exc)) from None
    results = []
    if not as_json:
        click.echo(f"{describe_input(predictor, loaded)} over {transport} to "
                   f"{', '.join(client.endpoints.addresses)}")
        click.echo(f"{'conc':>5} {'reqs':>6} {'errs':>5} {'req/s':>8} "
                   f"{'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9}")
    for level in levels:
        r = run_level(predictor, loaded, level, duration, requests)
        results.append(r)
        if not as_json:
            fmt = lambda v: f"{v:9.1f}" if v is not None else f"{'-':>9}"  # noqa: E731
            click.echo(f"{r.concurrency:>5} {r.requests:>6} {r.errors:>5} {r.throughput:>8.2f} "
                       f"{fmt(r.p50_ms)} {fmt(r.p90_ms)} {fmt(r.p99_ms)}")
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


@main.command(short_help="Start a model server (docker, native or embedded).")
@click.argument("base", required=False, type=click.Path(path_type=Path))
@click.option("--model-name", default="deeplab", show_default=True)
@click.option("--name", default=None, help="Server name for status/logs/stop [model name].")
@click.option("--runtime", type=click.Choice(["auto", "docker", "native", "embedded"]),
              default="auto", show_default=True)
@click.option("--gpu", is_flag=True, help="Docker: the -gpu image and a GPU device request.")
@click.option("--gpus", default=None, metavar="0,1", help="With --gpu: which GPUs [all].")
@click.option("--grpc-port", type=click.IntRange(1, 65535), default=8500, show_default=True)
@click.option("--rest-port", type=click.IntRange(1, 65535), default=8501, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address the ports are bound / published on.")
@click.option("--image", default=None, help="Docker image [tensorflow/serving:<version>].")
@click.option("--model-config-file", type=click.Path(path_type=Path), default=None,
              help="ModelServerConfig text proto (several models, policies, labels).")
@click.option("--enable-batching", is_flag=True)
@click.option("--batching-parameters-file", type=click.Path(path_type=Path), default=None)
@click.option("--monitoring-config-file", type=click.Path(path_type=Path), default=None)
@click.option("--restart", type=click.Choice(["no", "on-failure", "unless-stopped", "always"]),
              default=None, help="Docker restart policy.")
@click.option("--poll-seconds", type=float, default=1.0, show_default=True,
              help="How often the server looks for new versions.")
@click.option("--foreground", is_flag=True, help="Stay attached; Ctrl-C stops the server.")
@click.option("--timeout", type=float, default=180, show_default=True,
              help="Seconds to wait for the model to become AVAILABLE.")
@click.option("--json", "as_json", is_flag=True)
def serve(base, model_name, name, runtime, gpu, gpus, grpc_port, rest_port, host, image,
          model_config_file, enable_batching, batching_parameters_file,
          monitoring_config_file, restart, poll_seconds, foreground, timeout,
          as_json) -> None:
    """Serve a model base path with TF Serving (docker, native) or the embedded server.

    BASE defaults to models/deeplab.  The server runs in the background until
    `tfdeploy stop`; `tfdeploy predict` finds it by default.

    \b
    Examples:
      tfdeploy serve                                   # auto: docker, native or embedded
      tfdeploy serve models/deeplab --runtime docker --gpu
      tfdeploy serve --runtime embedded --grpc-port 9000 --rest-port 9001
      tfdeploy serve --model-config-file models.config --runtime docker
    """
    from tfdeploy.runtime import manage
    from tfdeploy.runtime.base import ServeSpec

    if base is None and model_config_file is None:
        base = Path("models/deeplab")
    if gpus and not gpu:
        raise UserError("--gpus needs --gpu")
    spec = ServeSpec(base_path=base, model_name=model_name, name=name or "", host=host,
                     grpc_port=grpc_port, rest_port=rest_port,
                     model_config_file=model_config_file, enable_batching=enable_batching,
                     batching_parameters_file=batching_parameters_file,
                     monitoring_config_file=monitoring_config_file, gpu=gpu,
                     gpus=[g.strip() for g in gpus.split(",")] if gpus else [],
                     image=image, restart=None if restart == "no" else restart,
                     poll_seconds=poll_seconds)
    say = None if as_json else (lambda msg: click.echo(f"  {msg}", err=True))
    if foreground:
        sys.exit(manage.run_foreground(spec, runtime, say, emit=click.echo))
    record, why, status = manage.serve(spec, runtime, timeout, say)
    payload = {**record.to_json(), "why": why, "versions": status,
               "grpc": record.grpc_endpoint, "rest": record.rest_endpoint}
    versions = ", ".join(f"v{v} {s}" for v, s in sorted(status.items()))
    _emit(as_json, payload,
          f"serving {record.model_name} ({versions}) with the {record.runtime} runtime\n"
          f"  gRPC  {record.grpc_endpoint}\n  REST  http://{record.rest_endpoint}"
          f"/v1/models/{record.model_name}\n"
          f"  stop with: tfdeploy stop {record.name}")


@main.command(short_help="Servers tfdeploy started, their models and endpoints.")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True)
def status(name, as_json) -> None:
    """List the servers tfdeploy started: runtime, model versions and endpoints.

    \b
    Examples:
      tfdeploy status
      tfdeploy status deeplab --json
    """
    from tfdeploy.runtime import manage

    servers = manage.status(name)
    if as_json:
        click.echo(json.dumps(servers, indent=2))
        return
    if not servers:
        click.echo("no servers (start one with `tfdeploy serve`)")
        return
    for s in servers:
        state_text = "running" if s["running"] else "NOT RUNNING"
        versions = ", ".join(f"v{v} {st}" for v, st in sorted(s["versions"].items())) or "-"
        where = s["container_id"][:12] if s["container_id"] else f"pid {s['pid']}"
        click.echo(f"{s['name']}: {state_text}, {s['runtime']} ({where}), model "
                   f"{s['model_name']}: {versions}; gRPC {s['grpc']}, REST {s['rest']}")


@main.command(short_help="Print (or follow) a server's log.")
@click.argument("name", required=False)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.option("--tail", type=int, default=100, show_default=True)
def logs(name, follow, tail) -> None:
    """Print a server's log (the only one, or NAME).

    \b
    Examples:
      tfdeploy logs
      tfdeploy logs deeplab -f
    """
    from tfdeploy.runtime import manage

    try:
        for line in manage.logs(name, follow=follow, tail=tail):
            click.echo(line)
    except KeyboardInterrupt:
        pass


@main.command(short_help="Stop servers; leaves no container or process.")
@click.argument("name", required=False)
@click.option("--all", "all_servers", is_flag=True, help="Stop every server tfdeploy started.")
@click.option("--timeout", type=float, default=30, show_default=True,
              help="Seconds to let in-flight requests finish.")
def stop(name, all_servers, timeout) -> None:
    """Stop a server (the only one, NAME, or --all); leaves no container or process.

    \b
    Examples:
      tfdeploy stop
      tfdeploy stop --all
    """
    from tfdeploy.runtime import manage

    stopped = manage.stop(name, all_servers, timeout)
    click.echo(f"stopped {', '.join(stopped)}" if stopped else "nothing to stop")


@main.command(short_help="Kubernetes, KServe or compose files for scaling out.")
@click.option("--target", "-t", type=click.Choice(["k8s", "kserve", "compose"]), required=True)
@click.argument("source", required=False, default="models/deeplab")
@click.option("--replicas", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--max-replicas", type=click.IntRange(min=1), default=None,
              help="HPA / KServe upper bound [3 x replicas].")
@click.option("--gpu", is_flag=True, help="-gpu image, nvidia.com/gpu limit, GPU toleration.")
@click.option("--image", default=None, help="Serving image [tensorflow/serving:<version>].")
@click.option("--model-name", default="deeplab", show_default=True)
@click.option("--pvc", default=None, help="Claim holding a local base path [<name>-models].")
@click.option("--pvc-size", default="2Gi", show_default=True)
@click.option("--storage-class", default=None)
@click.option("--namespace", default=None)
@click.option("--node-selector", multiple=True, metavar="KEY=VALUE",
              help="Pod node selector (repeatable), e.g. for GPU node pools.")
@click.option("--cpu", default="1", show_default=True, help="CPU request per replica.")
@click.option("--memory", default="2Gi", show_default=True, help="Memory per replica.")
@click.option("--model-config-file", type=click.Path(exists=True, path_type=Path), default=None)
@click.option("--batching-parameters-file", type=click.Path(exists=True, path_type=Path),
              default=None)
@click.option("--grpc-port", type=int, default=8500, show_default=True,
              help="compose: first replica's gRPC port (next ones +2 each).")
@click.option("--rest-port", type=int, default=8501, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="compose: bind address.")
@click.option("-o", "--output-dir", type=click.Path(path_type=Path), default=Path("deploy"),
              show_default=True)
@click.option("--json", "as_json", is_flag=True)
def manifest(target, source, replicas, max_replicas, gpu, image, model_name, pvc, pvc_size,
             storage_class, namespace, node_selector, cpu, memory, model_config_file,
             batching_parameters_file, grpc_port, rest_port, host, output_dir,
             as_json) -> None:
    """Write ready-to-apply manifests for SOURCE (a base path or gs:// / s3:// URI).

    \b
      k8s      Deployment + Service + HorizontalPodAutoscaler (+ PVC, ConfigMap)
      kserve   InferenceService with a TensorFlow predictor
      compose  N replicas of the serving image, ports on 127.0.0.1

    \b
    Examples:
      tfdeploy manifest -t k8s gs://my-bucket/models/deeplab --replicas 3 --gpu
      kubectl apply -f deploy/deeplab-serving.k8s.yaml
      tfdeploy manifest -t compose models/deeplab --replicas 2
      docker compose -f deploy/compose.yaml up -d
    """
    from tfdeploy.deploy.manifests import ManifestSpec, endpoints, write

    selectors = {}
    for item in node_selector:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--node-selector wants KEY=VALUE, got {item!r}")
        selectors[key] = value
    spec = ManifestSpec(source=source, model_name=model_name, replicas=replicas,
                        max_replicas=max_replicas, gpu=gpu, image=image, pvc=pvc,
                        pvc_size=pvc_size, storage_class=storage_class, cpu=cpu,
                        memory=memory, namespace=namespace, node_selector=selectors,
                        model_config_file=model_config_file,
                        batching_parameters_file=batching_parameters_file,
                        grpc_port=grpc_port, rest_port=rest_port, host=host)
    if not spec.remote and target != "kserve" and not Path(source).is_dir():
        raise UserError(f"{source}: no such base path (export first, or give a gs:// or "
                        "s3:// URI)")
    files = write(target, spec, output_dir)
    payload = {"target": target, "files": [str(f) for f in files], "image": spec.image}
    if target == "compose":
        payload["grpc_endpoints"] = endpoints(spec, "grpc")
        payload["rest_endpoints"] = endpoints(spec, "rest")
    lines = [f"wrote {f}" for f in files]
    if target == "compose":
        lines.append(f"then: docker compose -f {files[0]} up -d && tfdeploy predict IMAGES "
                     f"--server {','.join(payload['grpc_endpoints'])}")
    elif not spec.remote:
        lines.append(f"copy {source} into the volume of claim {spec.pvc} "
                     f"(as {model_name}/<version>/) before applying")
    _emit(as_json, payload, "\n".join(lines))


if __name__ == "__main__":
    main()
