"""``tfdeploy ui``: the local web page (the app lives in ``tfdeploy/webui``)."""

from __future__ import annotations

import click

from tfdeploy.cli.app import main


@main.command(short_help="A local web page: images in, masks shown, two versions compared.")
@click.option("--server", "-s", default=None, metavar="HOST:PORT",
              help="The model server's REST endpoint (tfdeploy-model-server or "
                   "tensorflow_model_server). Default: the only running server "
                   "`tfdeploy serve` started (several: pick one with --name), else "
                   "localhost:8501.")
@click.option("--name", default=None,
              help="The tfdeploy server to use (see `tfdeploy status`).")
@click.option("--model", "-m", default=None,
              help="Model to show first. Default: the server's models (a recorded "
                   "server's), else deeplab. The page can switch to any other.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address the page listens on (keep 127.0.0.1 unless others must see "
                   "it: the page has no login).")
@click.option("--port", "-p", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="Port the page listens on; 0 picks a free one.")
@click.option("--classes", default="auto", show_default=True, metavar="auto|voc|demo|A,B,..",
              help="Class names for the legend, in class index order. auto: from the "
                   "served export when tfdeploy serve started it, else 'class N'.")
@click.option("--max-upload-mb", type=click.FloatRange(min=0.001), default=32,
              show_default=True, help="Larger uploads are refused with this limit named.")
@click.option("--request-log", default=None, metavar="PATH_OR_PREFIX",
              help="Browse the requests logged here (a log directory, a logging_config "
                   "filename_prefix, or one .tfrecord file), each with its logged mask. "
                   "Default: the logs of the --name server's logging_config, if any.")
@click.option("--open", "open_browser", is_flag=True, help="Open the page in a browser.")
def ui(server, name, model, host, port, classes, max_upload_mb, request_log,
       open_browser) -> None:
    """Serve a local web page that segments images through a model server.

    Pick or drop images: each shows the original, the mask over it (with an opacity
    slider), the mask alone, a legend of classes with their share of pixels, and the
    version used with its latency.  Compare mode runs the same images through two
    versions or labels and shows where they differ, the pixel agreement and per-class
    IoU.  With a request log, a Requests view lists the logged requests (newest
    first) with the masks the server answered then, and runs one again on the current
    version to compare.  Uploads stay in memory; nothing is written to disk (the log
    is only read).  Ctrl-C stops it.

    \b
    Examples:
      tfdeploy ui                                # the running `tfdeploy serve` server
      tfdeploy ui --name staging --open
      tfdeploy ui --server 10.0.0.5:8501 --classes voc --port 8080
      tfdeploy ui --request-log /var/log/tfdeploy/deeplab   # a logging_config prefix
    """
    from tfdeploy.api import ui as run_ui

    def ready(url: str) -> None:
        click.echo(f"tfdeploy ui: {url}  (Ctrl-C stops it)", err=False)

    run_ui(server, name, model=model, host=host, port=port, classes=classes,
           max_upload_mb=max_upload_mb, open_browser=open_browser,
           request_log=request_log, ready=ready)
