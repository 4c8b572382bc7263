"""``tfdeploy serve``, ``status``, ``logs`` and ``stop``: server lifecycle commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from tfdeploy.cli.app import emit, main, progress_printer
from tfdeploy.errors import UserError
from tfdeploy.runtime.base import DEFAULT_CONFIG_POLL, pass_through_help
from tfdeploy.tfs.names import DEFAULT_MODEL_NAME, GRPC_PORT, REST_PORT


def _env(ctx, param, values: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r}: use KEY=VALUE")
        env[key] = value
    return env


@main.command(short_help="Start a model server (docker, native or embedded).",
              context_settings={"ignore_unknown_options": False},
              epilog=pass_through_help())
@click.argument("base", required=False, type=click.Path(path_type=Path))
@click.argument("server_flags", nargs=-1, type=click.UNPROCESSED, metavar="[-- FLAGS...]")
@click.option("--model-name", default=DEFAULT_MODEL_NAME, show_default=True,
              help="The name clients ask for (/v1/models/NAME); without a model config.")
@click.option("--name", default=None, help="Server name for status/logs/stop [model name].")
@click.option("--runtime", type=click.Choice(["auto", "docker", "native", "embedded"]),
              default="auto", show_default=True)
@click.option("--gpu", is_flag=True, help="Docker: the -gpu image and a GPU device request.")
@click.option("--gpus", default=None, metavar="0,1", help="With --gpu: which GPUs [all].")
@click.option("--grpc-port", type=click.IntRange(0, 65535), default=GRPC_PORT,
              show_default=True, help="0 = any free port (shown, and in `tfdeploy status`).")
@click.option("--rest-port", type=click.IntRange(0, 65535), default=REST_PORT,
              show_default=True, help="0 = any free port.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address the ports are bound / published on.")
@click.option("--image", default=None,
              help="Docker image [tensorflow/serving:<version>, else a locally built "
                   "tfdeploy/serving-embedded:latest].")
@click.option("--model-config-file", type=click.Path(path_type=Path), default=None,
              help="ModelServerConfig text proto (several models, policies, labels). "
                   "serve waits until every model in it has a version AVAILABLE.")
@click.option("--config-poll", type=click.FloatRange(min=0), default=DEFAULT_CONFIG_POLL,
              show_default=True, metavar="SECONDS",
              help="With --model-config-file: re-read it this often, so editing it adds, "
                   "removes or relabels models in the running server; 0 = never.")
@click.option("--enable-batching", is_flag=True,
              help="Batch concurrent requests together (tensorflow_model_server's "
                   "default batching parameters).")
@click.option("--batching-parameters-file", type=click.Path(path_type=Path), default=None,
              help="BatchingParameters text proto (turns batching on).")
@click.option("--monitoring-config-file", type=click.Path(path_type=Path), default=None,
              help="MonitoringConfig text proto (Prometheus metrics on the REST port).")
@click.option("--restart", type=click.Choice(["no", "on-failure", "unless-stopped", "always"]),
              default=None, help="Docker restart policy.")
@click.option("--cpus", type=float, default=None, help="Docker: CPU limit (e.g. 1.5).")
@click.option("--memory", default=None, metavar="SIZE",
              help="Docker: memory limit (512m, 2g; none = no limit) [4g].")
@click.option("--user", default=None, metavar="UID[:GID]",
              help="Docker: user the container runs as [1000:1000, never root unless asked].")
@click.option("--pids-limit", type=int, default=None,
              help="Docker: most processes/threads in the container [4096].")
@click.option("--env", "-e", "env", multiple=True, callback=_env, metavar="KEY=VALUE",
              help="Environment of the server (repeatable), e.g. cloud credentials.")
@click.option("--volume", "-v", "volumes", multiple=True, metavar="HOST:CONTAINER[:rw]",
              help="Docker: an extra bind mount (repeatable), read-only unless :rw.")
@click.option("--ssl-config-file", type=click.Path(path_type=Path), default=None,
              help="SSLConfig text proto (server_key, server_cert, custom_ca, "
                   "client_verify): gRPC over TLS, and REST over HTTPS with the embedded "
                   "server or the tfdeploy image (tensorflow_model_server's REST stays "
                   "plain HTTP). Client commands then use TLS without options.")
@click.option("--tls-ca", type=click.Path(path_type=Path), default=None, metavar="FILE",
              help="With --ssl-config-file: the CA that signed the server's certificate, "
                   "which clients trust [custom_ca, else the certificate itself, "
                   "whichever verifies it].")
@click.option("--tls-cert", type=click.Path(path_type=Path), default=None, metavar="FILE",
              help="With --ssl-config-file: a client certificate the server accepts "
                   "(needed with client_verify), used by readiness checks and client "
                   "commands.")
@click.option("--tls-key", type=click.Path(path_type=Path), default=None, metavar="FILE",
              help="Key of --tls-cert.")
@click.option("--tls-server-name", default=None, metavar="NAME",
              help="With --ssl-config-file: the name the server's certificate carries, "
                   "when it is not the address's host.")
@click.option("--poll-seconds", type=float, default=1.0, show_default=True,
              help="How often the server looks for new versions.")
@click.option("--foreground", is_flag=True, help="Stay attached; Ctrl-C stops the server.")
@click.option("--timeout", type=float, default=180, show_default=True,
              help="Seconds to wait for the models to become AVAILABLE.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the server's record (ports, pid, versions) as JSON.")
def serve(base, server_flags, model_name, name, runtime, gpu, gpus, grpc_port, rest_port,
          host, image, model_config_file, enable_batching, batching_parameters_file,
          monitoring_config_file, restart, cpus, memory, user, pids_limit, env, volumes,
          poll_seconds, foreground, timeout, as_json, config_poll, ssl_config_file, tls_ca,
          tls_cert, tls_key, tls_server_name) -> None:
    """Serve a model base path with TF Serving (docker, native) or the embedded server.

    BASE defaults to models/deeplab.  The server runs in the background until
    `tfdeploy stop`; `tfdeploy predict` finds it by default.  Flags after `--` go to
    tensorflow_model_server as they are (checked against the flags it has).

    \b
    Examples:
      tfdeploy serve                                   # auto: docker, native or embedded
      tfdeploy serve models/deeplab --runtime docker --gpu
      tfdeploy serve --runtime embedded --grpc-port 0 --rest-port 0   # free ports
      tfdeploy serve --model-config-file models.config --runtime docker
      tfdeploy serve --runtime docker --cpus 2 --memory 4g -e AWS_REGION=eu-west-1
      tfdeploy serve --runtime docker -- --tensorflow_intra_op_parallelism=2
      tfdeploy serve --runtime embedded --ssl-config-file ssl.config   # TLS + HTTPS
    """
    from tfdeploy.api import serve as start_server
    from tfdeploy.runtime import manage
    from tfdeploy.runtime.base import ServeSpec

    flags = list(server_flags)
    if base is not None and str(base).startswith("-"):  # `serve -- --flag`: no BASE
        flags.insert(0, str(base))
        base = None
    if base is None and model_config_file is None:
        base = Path("models/deeplab")
    if gpus and not gpu:
        raise UserError("--gpus needs --gpu")
    options = dict(model_config_file=model_config_file, enable_batching=enable_batching,
                   batching_parameters_file=batching_parameters_file,
                   monitoring_config_file=monitoring_config_file, gpu=gpu,
                   gpus=[g.strip() for g in gpus.split(",")] if gpus else [],
                   image=image, restart=None if restart == "no" else restart,
                   poll_seconds=poll_seconds, config_poll=config_poll,
                   extra_flags=flags, env=env, cpus=cpus,
                   memory=memory, volumes=list(volumes), user=user, pids_limit=pids_limit,
                   ssl_config_file=ssl_config_file, tls_ca=tls_ca, tls_cert=tls_cert,
                   tls_key=tls_key, tls_server_name=tls_server_name)
    say = progress_printer(as_json)
    if foreground:
        spec = ServeSpec(base_path=base, model_name=model_name, name=name or "", host=host,
                         grpc_port=grpc_port, rest_port=rest_port, **options)
        sys.exit(manage.run_foreground(spec, runtime, say, emit=click.echo))
    server = start_server(base, runtime=runtime, name=name, model_name=model_name,
                          grpc_port=grpc_port, rest_port=rest_port, host=host,
                          timeout=timeout, progress=say, **options)
    record = server.record
    payload = {**record.to_json(), "why": server.why, "versions": server.versions,
               "grpc": server.grpc_address, "rest": record.rest_endpoint}
    versions = ", ".join(f"v{v} {s}" for v, s in sorted(server.versions.items()))
    models = ("" if len(record.models) < 2
              else f"\n  models: {', '.join(record.models)}")
    emit(as_json, payload,
          f"serving {record.model_name} ({versions}) with the {record.runtime} runtime"
          f"{models}\n  gRPC  {server.grpc_address}\n  REST  {server.rest_url}"
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
    from tfdeploy.api import servers as list_servers

    servers = list_servers(name)
    if as_json:
        click.echo(json.dumps(servers, indent=2))
        return
    if not servers:
        click.echo("no servers (start one with `tfdeploy serve`)")
        return
    for s in servers:
        state_text = "running" if s["running"] else "NOT RUNNING"
        where = s["container_id"][:12] if s["container_id"] else f"pid {s['pid']}"
        models = "; ".join(
            f"model {model}: "
            + (", ".join(f"v{v} {st}" for v, st in sorted(versions.items(),
                                                         key=lambda kv: int(kv[0])))
               or "-")
            + (" (labels " + ", ".join(f"{k}=v{v}" for k, v in labels.items()) + ")"
               if (labels := s["model_labels"].get(model)) else "")
            for model, versions in s["model_versions"].items())
        click.echo(f"{s['name']}: {state_text}, {s['runtime']} ({where}), {models}; "
                   f"gRPC {s['grpc']}{' (TLS)' if s['grpc_tls'] else ''}, "
                   f"REST {s['rest']}{' (HTTPS)' if s['rest_tls'] else ''}"
                   + (f"\n  {s['hint']}" if s["hint"] else ""))


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
    from tfdeploy.api import logs as server_logs

    try:
        for line in server_logs(name, follow=follow, tail=tail):
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
    from tfdeploy.api import stop as stop_servers

    stopped = stop_servers(name, all_servers, timeout)
    click.echo(f"stopped {', '.join(stopped)}" if stopped else "nothing to stop")
