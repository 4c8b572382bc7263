"""Errors that mean "the user asked for something we cannot do", not "tfdeploy is broken".

The CLI turns these into one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (paths, checkpoints, flags). Exit code 2."""

    exit_code = 2


class ExportError(UserError):
    """Export ran but its result is unusable (verification failed). Exit code 1."""

    exit_code = 1
