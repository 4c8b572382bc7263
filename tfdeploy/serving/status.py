"""Error codes shared by the gRPC and REST front ends (TF Serving's canonical codes)."""

from __future__ import annotations

import enum


class Code(enum.Enum):
    OK = (0, 200)
    INVALID_ARGUMENT = (3, 400)
    NOT_FOUND = (5, 404)
    RESOURCE_EXHAUSTED = (8, 429)
    FAILED_PRECONDITION = (9, 400)
    UNIMPLEMENTED = (12, 501)
    INTERNAL = (13, 500)
    UNAVAILABLE = (14, 503)

    @property
    def number(self) -> int:
        return self.value[0]

    @property
    def http(self) -> int:
        return self.value[1]


class ServingError(Exception):
    """A request that cannot be served; the message names the problem for the client."""

    def __init__(self, code: Code, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def tf_error_message(exc: Exception) -> str:
    """The line of a TF runtime error that says what is wrong.

    TF wraps the op's message in "Graph execution error", node names and stack notes; a
    client needs only the op's own words ("Unknown image file format ...")."""
    text = getattr(exc, "message", None) or str(exc)
    keep = [
        line for line in text.splitlines()
        if line.strip() and not line[0].isspace()
        and not line.startswith(("Graph execution error", "Detected at node", "<stack trace",
                                 "File \"", "[["))
    ]
    line = keep[-1] if keep else (text.strip().splitlines() or [type(exc).__name__])[0]
    line = line.split("\t [[", 1)[0].split(" [[", 1)[0].strip()
    if line.startswith("assertion failed: [") and "]" in line:
        line = line[len("assertion failed: ["):line.index("]")].strip().rstrip(".")
    return line
