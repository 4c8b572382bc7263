"""``tfdeploy requests``: list and export the requests the embedded server logged."""

from __future__ import annotations

from pathlib import Path

import click

from tfdeploy.cli.app import emit, main


@main.command(short_help="List and export logged requests (a model's logging_config).")
@click.argument("log", type=click.Path(path_type=Path), required=False)
@click.option("--name", default=None,
              help="Without LOG: the logs of this server `tfdeploy serve` started (its "
                   "models' logging_config). Default: the only one running.")
@click.option("--export", "export_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, metavar="DIR",
              help="Write the logged images to DIR/images, and where the response was "
                   "logged their masks (DIR/masks, palette PNG) and overlays "
                   "(DIR/overlays).")
@click.option("--no-masks", is_flag=True, help="With --export: images only.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def requests(log: Path | None, name: str | None, export_dir: Path | None, no_masks: bool,
             as_json: bool) -> None:
    """List the requests logged in LOG (the directory of a model's logging_config
    filename_prefix, the prefix itself, or one of its .tfrecord files) and optionally
    export them.  Without LOG: the logs of the server `tfdeploy serve` started.

    \b
    Examples:
      tfdeploy requests /var/log/tfdeploy
      tfdeploy requests --name staging          # the logs its model config names
      tfdeploy requests /var/log/tfdeploy --export sample/
      tfdeploy export --probe sample/images      # check a new export on real traffic
      tfdeploy bench --from-log /var/log/tfdeploy
    """
    from tfdeploy.api import requests as run

    result = run(log, export_dir=export_dir, masks=not no_masks, name=name)
    lines = [f"{'time (UTC)':<20} {'model':<12} {'ver':>4} {'signature':<16} inputs"]
    for r in result["requests"]:
        sizes = ", ".join(r["image_sizes"]) or ", ".join(
            f"{k} {'x'.join(map(str, s))}" for k, s in r["inputs"].items()) or r["kind"]
        lines.append(f"{r['time'][:19]:<20} {r['model']:<12} {r['version']:>4} "
                     f"{r['signature']:<16} {sizes}")
    lines.append(f"{len(result['requests'])} request(s)")
    if export_dir is not None:
        masks = sum(1 for e in result["exported"] if e["mask"])
        lines.append(f"exported {len(result['exported'])} image(s), {masks} with masks, "
                     f"to {export_dir}")
    emit(as_json, result, "\n".join(lines))
