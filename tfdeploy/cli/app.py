"""The command group, its error handling and the helpers every command shares."""

from __future__ import annotations

import json
import logging
import os
import sys

import click

from tfdeploy.errors import UserError


class _Group(click.Group):
    """Turns UserError into one line on stderr and its exit code, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"error: {exc.flag_text()}", err=True)
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
    quiet_grpc_core()
    warnings_as_lines()


class _LineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


def warnings_as_lines() -> None:
    """The library's warnings (``log.warning`` under ``tfdeploy.``: a config file rewritten
    in full, a state record ignored, an endpoint set aside) reach stderr as the CLI's own
    lines, ``warning: ...``, not as bare text from Python's last-resort handler."""
    logger = logging.getLogger("tfdeploy")
    if any(isinstance(h.formatter, _LineFormatter) for h in logger.handlers):
        return
    handler = logging.StreamHandler()
    handler.setFormatter(_LineFormatter())
    handler.setLevel(logging.WARNING)
    logger.addHandler(handler)  # still propagating: a host's own handlers see them too


def quiet_grpc_core() -> None:
    """Load gRPC with its C core logging errors only, so a failure the CLI reports as one
    line (a TLS handshake refused: the wrong ``--tls-ca``) is not preceded by the core's
    own INFO line about it.  The core reads ``GRPC_VERBOSITY`` once, when it loads, so the
    variable is set only around that import: the servers ``tfdeploy serve`` starts inherit
    this process's environment and log as they would anywhere.  A ``GRPC_VERBOSITY`` the
    user set is left to work (~50 ms, once per command)."""
    if "GRPC_VERBOSITY" in os.environ or "grpc" in sys.modules:
        return
    os.environ["GRPC_VERBOSITY"] = "ERROR"
    try:
        import grpc  # noqa: F401
    except ImportError:  # a CLI without gRPC: nothing to quiet
        pass
    finally:
        del os.environ["GRPC_VERBOSITY"]


def emit(as_json: bool, payload: dict | list, text: str) -> None:
    """Print ``payload`` as JSON (``--json``) or ``text``."""
    click.echo(json.dumps(payload, indent=2) if as_json else text)


def progress_printer(as_json: bool, template: str = "  {}"):
    """A progress callback that writes to stderr, or None under ``--json``."""
    if as_json:
        return None
    return lambda msg: click.echo(template.format(msg), err=True)
