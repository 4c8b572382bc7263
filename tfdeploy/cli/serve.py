"""``tfdeploy serve``, ``status``, ``logs`` and ``stop``: server lifecycle commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from tfdeploy.cli.app import emit, main, progress_printer
from tfdeploy.errors import UserError
from tfdeploy.tfs.names import DEFAULT_MODEL_NAME, GRPC_PORT, REST_PORT


@main.command(short_help="Start a model server (docker, native or embedded).")
@click.argument("base", required=False, type=click.Path(path_type=Path))
@click.option("--model-name", default=DEFAULT_MODEL_NAME, show_default=True)
@click.option("--name", default=None, help="Server name for status/logs/stop [model name].")
@click.option("--runtime", type=click.Choice(["auto", "docker", "native", "embedded"]),
              default="auto", show_default=True)
@click.option("--gpu", is_flag=True, help="Docker: the -gpu image and a GPU device request.")
@click.option("--gpus", default=None, metavar="0,1", help="With --gpu: which GPUs [all].")
@click.option("--grpc-port", type=click.IntRange(1, 65535), default=GRPC_PORT,
              show_default=True)
@click.option("--rest-port", type=click.IntRange(1, 65535), default=REST_PORT,
              show_default=True)
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
    say = progress_printer(as_json)
    if foreground:
        sys.exit(manage.run_foreground(spec, runtime, say, emit=click.echo))
    record, why, status = manage.serve(spec, runtime, timeout, say)
    payload = {**record.to_json(), "why": why, "versions": status,
               "grpc": record.grpc_endpoint, "rest": record.rest_endpoint}
    versions = ", ".join(f"v{v} {s}" for v, s in sorted(status.items()))
    emit(as_json, payload,
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
