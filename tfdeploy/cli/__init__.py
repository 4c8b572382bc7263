"""The ``tfdeploy`` command line: parse, call the library, print.  No logic here.

One module per command group; each registers its commands on ``main``.  Library calls are
imported inside the commands, so ``tfdeploy predict`` never pays for TensorFlow.
"""

from tfdeploy.cli import (  # noqa: F401 (registers commands)
    export,
    manifest,
    predict,
    promote,
    requests,
    serve,
    ui,
)
from tfdeploy.cli.app import main

__all__ = ["main"]
