"""The ``tfdeploy`` command line: parse, call the library, print.  No logic here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from tfdeploy.errors import UserError


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
    """DeepLab-v3 checkpoint -> TensorFlow Serving, in three commands.

    \b
      tfdeploy export              checkpoint -> models/deeplab/<N>/ SavedModel
      tfdeploy inspect models/deeplab
    """


def _emit(as_json: bool, payload: dict, text: str) -> None:
    click.echo(json.dumps(payload, indent=2) if as_json else text)


@main.command()
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
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable result.")
def export(checkpoint: Path | None, output: Path, version: int | None, overwrite: bool,
           no_verify: bool, no_warmup: bool, model_name: str, as_json: bool) -> None:
    """Export a DeepLab-v3 checkpoint as a numbered SavedModel version.

    CHECKPOINT is a seed training directory (model.ckpt* + data.json), its `checkpoint`
    state file, a checkpoint prefix, or a tfdeploy checkpoint (config.json).  Default:
    the bundled demo checkpoint.

    \b
    Examples:
      tfdeploy export                                  # demo model -> models/deeplab/1
      tfdeploy export tboard_logs/16645/train -o serving/versions
      tfdeploy export ckpt/ --version 3 --overwrite --json
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
                        model_name=model_name, progress=progress)
    check = (f"verified (max logit diff {result.max_abs_logit_diff:.2g})"
             if result.verified else "not verified")
    text = (f"{result.path}\n"
            f"exported {result.backbone} ({result.format} checkpoint, {result.num_classes} "
            f"classes, OS{result.output_stride}) as version {result.version}"
            f"{' (replaced)' if result.replaced else ''}: signatures "
            f"{', '.join(result.signatures)}; {result.warmup_records} warmup records; "
            f"{check}; {result.seconds:.1f}s")
    _emit(as_json, result.to_json(), text)


@main.command()
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


if __name__ == "__main__":
    main()
