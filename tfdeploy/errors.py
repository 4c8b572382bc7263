"""Errors that mean "the user asked for something we cannot do", not "tfdeploy is broken".

They speak in library terms: an error about one argument names it in ``param`` (the
Python name, e.g. ``grpc_port``).  The CLI turns them into one line on stderr and a
non-zero exit code, never a traceback, and shows ``param`` as its flag (``--grpc-port``).
A message about several arguments names them as ``{fill_from}`` placeholders (listed in
``names``): ``str()`` shows the Python names, ``flag_text()`` the flags.
"""

from __future__ import annotations

import string


class UserError(Exception):
    """A problem with the user's input (paths, checkpoints, arguments). Exit code 2."""

    exit_code = 2

    def __init__(self, message: str, param: str | None = None, names: tuple[str, ...] = (),
                 values: dict[str, object] | None = None):
        self.template, self.names, self.values = message, names, values or {}
        self.message, self.param = self._render(str), param
        super().__init__(self.message)

    @classmethod
    def about(cls, template: str, param: str | None = None, **values: object) -> UserError:
        """An error whose ``template`` names arguments as ``{name}`` and shows values as
        ``{key}`` given in ``values`` (never formatted into the template first, so a brace
        in a user's value stays a brace)."""
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f}
        return cls(template, param, tuple(sorted(fields - set(values))), values)

    def _render(self, spell) -> str:
        if not self.names and not self.values:
            return self.template
        return self.template.format_map({**{n: spell(n) for n in self.names}, **self.values})

    def __str__(self) -> str:
        return f"{self.param}: {self.message}" if self.param else self.message

    def flag_text(self) -> str:
        """The message as a command-line user reads it (``--grpc-port: ...``)."""
        text = self._render(flag)
        return f"{flag(self.param)}: {text}" if self.param else text


def flag(param: str) -> str:
    """The command-line flag of a Python parameter name: ``grpc_port`` -> ``--grpc-port``."""
    return "--" + param.replace("_", "-")


class ExportError(UserError):
    """Export ran but its result is unusable (verification failed). Exit code 1."""

    exit_code = 1
