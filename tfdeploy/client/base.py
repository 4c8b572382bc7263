"""The Transport interface: one server endpoint, spoken to over gRPC or REST.

A Transport sends one call to one address and reports failure as a ``ClientError`` with
TF Serving's status code; it never retries.  Choosing endpoints and retrying is the
``EndpointPool``'s job (``client/pool.py``), which is itself a Transport, so code above
(``Predictor``, ``bench``) works the same with one server or several.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from concurrent.futures import Future
from typing import TYPE_CHECKING

from tfdeploy.tfs.codes import Code, StatusError
from tfdeploy.tfs.names import SERVING_DEFAULT
from tfdeploy.tfs.saved_model import Signature

if TYPE_CHECKING:
    import numpy as np

__all__ = ["ClientError", "Code", "Signature", "Transport"]


class ClientError(StatusError):
    """A call that failed: ``code`` (a ``Code``, compares equal to its name), the
    server's message, and the endpoint that answered (or did not).  ``retryable`` is the
    code's unless the transport knows better (a port that speaks the other protocol is
    UNAVAILABLE, but asking again cannot help); ``refused`` says no connection was made,
    which the pool treats as "no server there" until the endpoint has answered once."""

    def __init__(self, code: Code | str, message: str, endpoint: str = "",
                 retryable: bool | None = None, refused: bool = False):
        super().__init__(Code(code), message)
        self.endpoint = endpoint
        self.retryable = self.code.retryable if retryable is None else retryable
        #: no connection could be made (nothing listens there, or the host is away)
        self.refused = refused

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class Transport(abc.ABC):
    """The calls tfdeploy makes of a TF Serving endpoint.

    ``version`` everywhere is which version of the model: a number, a version label (a
    str: the ModelSpec's ``version_label``, REST ``/labels/NAME``), or None for the
    latest."""

    #: ``grpc`` or ``rest``
    name: str
    #: ``v1`` (TF Serving's API) or ``v2`` (the Open Inference Protocol)
    protocol: str = "v1"
    #: False when ``metadata`` may list only the default signature (v2 over gRPC: the
    #: protocol's metadata message has no room for others); a signature the caller names
    #: is then sent as asked and the server says whether the model has it.
    lists_every_signature: bool = True

    @abc.abstractmethod
    def metadata(self, model: str, version: int | None = None) -> dict[str, Signature]:
        """Signature key -> Signature of the model (GetModelMetadata)."""

    @abc.abstractmethod
    def status(self, model: str, version: int | None = None) -> dict[int, str]:
        """Version -> state name (``AVAILABLE``, ``LOADING``, ...) (GetModelStatus)."""

    @abc.abstractmethod
    def predict(self, model: str, signature: str, inputs: Mapping[str, np.ndarray],
                version: int | None = None, outputs: list[str] | None = None,
                output_dtypes: Mapping[str, str] | None = None) -> dict[str, np.ndarray]:
        """Run ``signature`` on numpy ``inputs``.  ``output_dtypes`` (key -> dtype name,
        from the signature) lets transports whose wire format loses dtypes (REST JSON)
        return arrays of the right type; gRPC ignores it."""

    @abc.abstractmethod
    def predict_png(self, model: str, image: bytes, version: int | None = None,
                    signature: str = SERVING_DEFAULT) -> bytes:
        """One encoded image -> its palette PNG mask (``mask_png``), without numpy."""

    def predict_async(self, model: str, signature: str, inputs: Mapping[str, np.ndarray],
                      version: int | None = None, outputs: list[str] | None = None,
                      output_dtypes: Mapping[str, str] | None = None) -> Future:
        """``predict`` without waiting: a Future of the outputs.  This default runs the
        call at once; gRPC overrides it with its own asynchronous call."""
        future: Future = Future()
        try:
            future.set_result(self.predict(model, signature, inputs, version, outputs,
                                           output_dtypes))
        except ClientError as exc:
            future.set_exception(exc)
        return future

    @property
    def counts(self) -> dict[str, int]:
        """Calls served per endpoint address (a pool has several)."""
        return {}

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Release connections."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
