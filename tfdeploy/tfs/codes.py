"""One status vocabulary: TF Serving's canonical (gRPC) codes, their HTTP statuses on the
REST API, and whether a client may retry a call that got them.

``Code`` members are strings equal to their names (``Code.NOT_FOUND == "NOT_FOUND"``), so
they print, compare and serialise as the names users see in gRPC errors.
"""

from __future__ import annotations

import enum
import re


class Code(str, enum.Enum):
    OK = "OK"
    CANCELLED = "CANCELLED"
    UNKNOWN = "UNKNOWN"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    ABORTED = "ABORTED"
    OUT_OF_RANGE = "OUT_OF_RANGE"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    INTERNAL = "INTERNAL"
    UNAVAILABLE = "UNAVAILABLE"
    DATA_LOSS = "DATA_LOSS"
    UNAUTHENTICATED = "UNAUTHENTICATED"

    def __str__(self) -> str:
        return self.value

    @property
    def number(self) -> int:
        """The canonical code number (``google.rpc.Code``, ``grpc.StatusCode``)."""
        return _NUMBERS[self]

    @property
    def http(self) -> int:
        """The HTTP status TF Serving's REST API answers with for this code."""
        return _HTTP[self]

    @property
    def retryable(self) -> bool:
        """Whether an idempotent call (Predict, metadata, status) may be sent again, to
        another endpoint or later.

        UNAVAILABLE: the server is starting, restarting or swapping, or not reachable.
        CANCELLED: what a call gets from a gRPC server that shuts down as it arrives (our
        client never cancels its own calls).  DEADLINE_EXCEEDED: the endpoint did not
        answer in time (hung, overloaded); another one may."""
        return self in _RETRYABLE

    @classmethod
    def from_number(cls, number: int) -> Code:
        return _BY_NUMBER.get(number, cls.UNKNOWN)

    @classmethod
    def from_http(cls, status: int) -> Code:
        """The code a REST client reads from an HTTP error status (the inverse of
        ``http`` where it is ambiguous picks the common case)."""
        return _FROM_HTTP.get(status, cls.UNKNOWN if status >= 500 else cls.INVALID_ARGUMENT)


_NUMBERS = {code: i for i, code in enumerate(Code)}
_BY_NUMBER = {n: code for code, n in _NUMBERS.items()}
_HTTP = {
    Code.OK: 200, Code.CANCELLED: 499, Code.UNKNOWN: 500, Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504, Code.NOT_FOUND: 404, Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403, Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400, Code.ABORTED: 409, Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501, Code.INTERNAL: 500, Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500, Code.UNAUTHENTICATED: 401,
}
_FROM_HTTP = {
    200: Code.OK, 400: Code.INVALID_ARGUMENT, 401: Code.UNAUTHENTICATED,
    403: Code.PERMISSION_DENIED, 404: Code.NOT_FOUND, 409: Code.ABORTED,
    413: Code.INVALID_ARGUMENT, 429: Code.RESOURCE_EXHAUSTED, 499: Code.CANCELLED,
    500: Code.INTERNAL, 501: Code.UNIMPLEMENTED, 503: Code.UNAVAILABLE,
    504: Code.DEADLINE_EXCEEDED,
}
_RETRYABLE = frozenset({Code.UNAVAILABLE, Code.CANCELLED, Code.DEADLINE_EXCEEDED})


#: What a client is told when the server itself failed (a bug, not the request): a fixed
#: text, as tensorflow_model_server never sends its internals; the details (exception,
#: traceback, paths) go to the server's log only.
INTERNAL_MESSAGE = "Internal error in the model server; its log has the details"


class StatusError(Exception):
    """A call that failed with a status: ``code`` (a ``Code``) and the message that names
    the problem.  The server raises it for requests it cannot serve; the client raises
    its subclass ``ClientError``."""

    def __init__(self, code: Code, message: str):
        super().__init__(message)
        self.code = Code(code)
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
    line = re.sub(r"^\{\{[^}]*\}\}\s*", "", line)  # {{function_node ...}} prefix
    line = re.sub(r"\s*\[Op:\w+\]$", "", line)  # [Op:SaveV2] suffix
    if line.startswith("assertion failed: [") and "]" in line:
        line = line[len("assertion failed: ["):line.index("]")].strip().rstrip(".")
    return line
