"""Errors that mean "the user asked for something we cannot do", not "tfdeploy is broken".

They speak in library terms: an error about one argument names it in ``param`` (the
Python name, e.g. ``grpc_port``).  The CLI turns them into one line on stderr and a
non-zero exit code, never a traceback, and shows ``param`` as its flag (``--grpc-port``).
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (paths, checkpoints, arguments). Exit code 2."""

    exit_code = 2

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message, self.param = message, param

    def __str__(self) -> str:
        return f"{self.param}: {self.message}" if self.param else self.message

    def flag_text(self) -> str:
        """The message as a command-line user reads it (``--grpc-port: ...``)."""
        if not self.param:
            return self.message
        return f"--{self.param.replace('_', '-')}: {self.message}"


class ExportError(UserError):
    """Export ran but its result is unusable (verification failed). Exit code 1."""

    exit_code = 1
