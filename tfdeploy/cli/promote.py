"""``tfdeploy promote`` and ``tfdeploy rollback``: move a version label, gated on masks."""

from __future__ import annotations

from pathlib import Path

import click

from tfdeploy.cli.app import emit, main, progress_printer
from tfdeploy.cli.predict import _tls_config, _tls_options

_SERVER_OPTIONS = [
    click.option("--name", default=None,
                 help="The tfdeploy server to change (see `tfdeploy status`). Default: the "
                      "only running server `tfdeploy serve` started."),
    click.option("--server", "-s", default=None, metavar="HOST:PORT",
                 help="The gRPC endpoint of any TF Serving server (tensorflow_model_server "
                      "or tfdeploy-model-server) instead; needs --config."),
    click.option("--config", "config", default=None, metavar="FILE",
                 type=click.Path(dir_okay=False, path_type=Path),
                 help="The model config file the server runs (default: the one `tfdeploy "
                      "serve` recorded). Rewritten atomically when the server polls it."),
    click.option("--label", "-l", default="stable", show_default=True,
                 help="The version label to move."),
]


def _server_options(f):
    """--name/--server/--config/--label, and --tls-* as `predict` takes them (for
    --server; a server `tfdeploy serve --ssl-config-file` started needs none)."""
    for option in reversed(_SERVER_OPTIONS):
        f = option(f)
    return _tls_options(f)


def _report(result) -> str:
    lines = []
    if result.images:
        lines.append(f"{'image':<28} {'agreement':>9} {'mean IoU':>9}")
        for i in result.images:
            lines.append(f"{Path(i.path).name:<28} {100 * i.agreement:>8.2f}% "
                         f"{i.mean_iou:>9.3f}")
        ious = ", ".join(f"{c}: {v:.3f}" for c, v in sorted(result.iou.items()))
        lines.append(f"pooled agreement {100 * result.agreement:.2f}%; per-class IoU {ious}")
        lines.append("p50 latency: " + ", ".join(
            f"version {v} {ms:.1f} ms" for v, ms in result.p50_ms.items()))
    for path, why in result.skipped.items():
        lines.append(f"skipped {path}: {why}")
    return "\n".join(lines)


@main.command(short_help="Move a version label to a new version if its masks agree.")
@click.argument("model")
@click.argument("version", type=click.IntRange(min=1))
@click.option("--sample", multiple=True, metavar="PATH",
              help="Images to compare the versions on (files, directories, globs; "
                   "repeatable). Default: the bundled demo images.")
@click.option("--min-agreement", type=click.FloatRange(0, 100), default=95.0,
              show_default=True,
              help="Percent of pixels each sample image's masks must agree on.")
@click.option("--dry-run", is_flag=True, help="Compare only; leave the label.")
@_server_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def promote(model, version, sample, min_agreement, dry_run, name, server, config, label,
            as_json) -> None:
    """Point LABEL of MODEL at VERSION, once VERSION's masks agree with the masks of the
    version LABEL points at now.

    Both versions segment the sample images; the per-image and pooled pixel agreement,
    per-class IoU and each version's p50 latency are printed.  Below --min-agreement on
    any image nothing changes (exit code 1) and the worst images and classes are named.
    Otherwise the label moves (HandleReloadConfigRequest) and the previous version is
    recorded for `tfdeploy rollback`.  VERSION must be loaded (AVAILABLE).

    \b
    Examples:
      tfdeploy promote deeplab 2                       # label stable -> version 2
      tfdeploy promote deeplab 3 --label canary --sample photos/
      tfdeploy promote deeplab 2 --server 10.0.0.5:8500 --config models.config
      tfdeploy promote deeplab 2 --server 10.0.0.5:8500 --config models.config \\
          --tls-ca ca.pem
    """
    from tfdeploy.api import promote as run
    from tfdeploy.rollout.promote import PromoteRefused

    try:
        result = run(model, version, label=label, sample=list(sample) or None,
                     min_agreement=min_agreement / 100, server=server, name=name,
                     config=config, dry_run=dry_run, progress=progress_printer(as_json),
                     tls=_tls_config())
    except PromoteRefused as exc:
        emit(as_json, exc.result.to_json(), _report(exc.result))
        raise
    if result.moved:
        verdict = f"label {label} of {model}: version {result.previous} -> {version}" \
            if result.previous is not None else f"label {label} of {model} set to {version}"
    elif result.previous == version:
        verdict = f"label {label} of {model} already points at version {version}"
    else:
        verdict = f"dry run: label {label} stays on version {result.previous}"
    text = "\n".join(filter(None, [_report(result), verdict]))
    emit(as_json, result.to_json(), text)


@main.command(short_help="Point a version label back where it was before the last promote.")
@click.argument("model")
@_server_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def rollback(model, name, server, config, label, as_json) -> None:
    """Point LABEL of MODEL back at the version it pointed at before the last
    `tfdeploy promote` on this server (no comparison: rolling back must be quick).

    \b
    Examples:
      tfdeploy rollback deeplab
      tfdeploy rollback deeplab --label canary --name staging
    """
    from tfdeploy.api import rollback as run

    result = run(model, label=label, server=server, name=name, config=config,
                 tls=_tls_config())
    emit(as_json, result, f"label {label} of {model}: version {result['from']} -> "
                          f"{result['version']}")
