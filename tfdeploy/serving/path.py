"""The one request path of the server: every inference call (Predict, Classify, Regress,
MultiInference), from gRPC or REST, goes through ``RequestPath`` in the same order:

1. **resolve** the model spec to a servable, once: the request keeps that servable to the
   end, even if it is unloaded meanwhile;
2. **decode** its inputs (the front end's wire format, checked against the signature and
   the per-request byte budget before anything is allocated);
3. **admit** it (``Admission``): an inference slot of its front end and its cost in the
   server-wide budget of pixels in flight; it waits in a bounded queue (UNAVAILABLE when
   full) and never past its deadline;
4. **deadline**: a request whose deadline passed is not run (DEADLINE_EXCEEDED); the time
   left bounds the session run (RunOptions ``timeout_in_ms``), as tensorflow_model_server
   bounds a run by the gRPC deadline or ``--rest_api_timeout_in_ms``;
5. **run**, then the response size against ``--max_response_bytes``;
6. **log** it when its model's ``logging_config`` samples it (``request_log.py``: only
   enqueued here, written by another thread);
7. **metrics**: every outcome, refusals included, is recorded here, once.

The front ends only convert wire formats to and from these calls.  Health and control
calls (status, metadata, reload, /metrics) never enter it, so they never wait behind
inference.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tfdeploy.serving.metrics import Metrics
from tfdeploy.tfs import tensors
from tfdeploy.tfs.codes import Code, StatusError
from tfdeploy.tfs.image_size import image_pixels
from tfdeploy.tfs.names import DEFAULT_SIGNATURE, HEIGHT, WIDTH

#: The message of a request whose deadline passed, as gRPC words it.
DEADLINE_MESSAGE = "Deadline Exceeded"


@dataclass
class Call:
    """One inference request as the front ends hand it over."""

    kind: str  # "predict", "classify", "regress" or "multi_inference"
    api: str  # "grpc" or "rest": whose inference slots it takes
    name: str
    version: int | None = None
    label: str | None = None
    signature: str = ""
    deadline: float | None = None  # time.monotonic() past which it is not worth running
    cancelled: threading.Event = field(default_factory=threading.Event)

    def remaining_ms(self) -> int:
        """Milliseconds left before the deadline (0: no deadline); DEADLINE_EXCEEDED when
        it passed (or the caller went away): such a request is not run."""
        if self.cancelled.is_set():
            raise StatusError(Code.CANCELLED, "the call was cancelled by its client")
        if self.deadline is None:
            return 0
        left = self.deadline - time.monotonic()
        if left <= 0.001:
            raise StatusError(Code.DEADLINE_EXCEEDED, DEADLINE_MESSAGE)
        return max(1, int(left * 1000))


def timeout_bucket(timeout_ms: int) -> int:
    """``timeout_ms`` rounded down to one of four steps per doubling (4, 5, 6, 7 x 2^k ms).

    A session callable's RunOptions are fixed when it is made, and every request brings
    its own time left; rounding down (the run ends at most ~20% before the deadline,
    never after it) keeps the callables per signature to a few dozen instead of one per
    distinct millisecond."""
    if timeout_ms <= 8:
        return max(0, timeout_ms)
    shift = timeout_ms.bit_length() - 3
    return (timeout_ms >> shift) << shift


def deadline_in(seconds: float | None, start: float | None = None) -> float | None:
    """A monotonic deadline ``seconds`` after ``start`` (now by default); None for none."""
    if seconds is None or seconds <= 0:
        return None
    return (time.monotonic() if start is None else start) + seconds


def request_cost(signature_def, inputs: dict[str, np.ndarray]) -> int:
    """What a request costs in the pixel budget: the pixels of its encoded images (from
    their headers, not decoded), or ``height`` x ``width`` of the seed's ``predict_images``
    (the size its graph resizes to), else the bytes of its inputs.  Pixels are what
    DeepLab's memory grows with; bytes bound everything else."""
    height, width = inputs.get(HEIGHT), inputs.get(WIDTH)
    if height is not None and width is not None and height.dtype.kind in "iu" \
            and width.dtype.kind in "iu" and height.size and width.size:
        size = int(np.max(height.astype(np.int64))) * int(np.max(width.astype(np.int64)))
        batch = max(1, max((v.shape[0] for v in inputs.values() if v.ndim == 4),
                           default=1))
        return max(1, size * batch)
    cost = 0
    for value in inputs.values():
        if value.dtype.kind == "O":
            for item in value.flat:
                pixels = image_pixels(item) if isinstance(item, bytes) else None
                cost += pixels if pixels is not None else (
                    len(item) if isinstance(item, bytes | str) else tensors.OBJECT_BYTES)
        else:
            cost += int(value.nbytes)
    return max(1, cost)


def response_bytes(outputs: dict[str, np.ndarray]) -> int:
    return sum(tensors.array_bytes(v) for v in outputs.values())


class Admission:
    """Where inference requests wait: the one place that bounds them.

    - ``slots[api]``: requests of that front end running at once (``--grpc_max_threads``,
      ``--rest_api_num_threads``);
    - ``max_queued``: requests of a front end waiting beyond its slots; one more is
      refused with UNAVAILABLE (clients retry it);
    - ``budget``: the server-wide cost in flight (``--max_inflight_pixels``, see
      ``request_cost``): large images queue instead of exhausting memory.  A request
      costing more than the whole budget runs only when nothing else is in flight.

    Waiters are served in arrival order for the budget (a large image is not starved by a
    stream of small ones); each waits at most until its deadline or cancellation.
    """

    def __init__(self, slots: dict[str, int], max_queued: int, budget: int):
        self.slots = dict(slots)
        self.max_queued = max_queued
        self.budget = budget
        self._cond = threading.Condition()
        self._running = dict.fromkeys(self.slots, 0)
        self._in_flight = 0  # cost of the requests running
        self._waiting: list[_Ticket] = []

    def _fits(self, ticket: _Ticket) -> bool:
        if self._running[ticket.api] >= self.slots[ticket.api]:
            return False
        if self._in_flight and self._in_flight + ticket.cost > self.budget:
            return False
        for earlier in self._waiting:  # an earlier waiter blocked on the budget goes first
            if earlier is ticket:
                return True
            if self._running[earlier.api] < self.slots[earlier.api]:
                return False
        return True

    def enter(self, call: Call, cost: int) -> _Ticket:
        """Wait for a slot and ``cost`` in the budget; UNAVAILABLE when the queue is full,
        DEADLINE_EXCEEDED (or CANCELLED) when the call ends first."""
        ticket = _Ticket(call.api, cost)
        with self._cond:
            if not self._fits(ticket):
                queued = sum(1 for t in self._waiting if t.api == call.api)
                if queued >= self.max_queued:
                    raise StatusError(Code.UNAVAILABLE,
                                      f"{queued} {call.api} requests already wait for an "
                                      "inference slot (--max_queued_requests); retry later")
                self._waiting.append(ticket)
                try:
                    while not self._fits(ticket):
                        call.remaining_ms()  # raises once the deadline passed
                        wait = 0.05 if call.deadline is None else min(
                            0.05, max(0.0, call.deadline - time.monotonic()))
                        self._cond.wait(wait)
                finally:
                    self._waiting.remove(ticket)
                    self._cond.notify_all()
            self._running[ticket.api] += 1
            self._in_flight += cost
        return ticket

    def leave(self, ticket: _Ticket) -> None:
        with self._cond:
            self._running[ticket.api] -= 1
            self._in_flight -= ticket.cost
            self._cond.notify_all()

    def snapshot(self) -> dict[str, Any]:
        """What is running and waiting now (for logs and tests)."""
        with self._cond:
            return {"running": dict(self._running), "in_flight": self._in_flight,
                    "waiting": len(self._waiting)}


@dataclass(eq=False)
class _Ticket:
    api: str
    cost: int


class _Observed:
    """Times one request and records it in the metrics with the status it ended with."""

    def __init__(self, metrics: Metrics, call: Call):
        self.metrics, self.call = metrics, call
        self.signature = call.signature or DEFAULT_SIGNATURE
        self.version: int | str = ""

    def __enter__(self) -> _Observed:
        self.started = time.perf_counter()
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        status = ("OK" if exc is None else
                  exc.code.name if isinstance(exc, StatusError) else Code.INTERNAL.name)
        self.metrics.observe(self.call.name, self.version, self.signature, self.call.api,
                             status, time.perf_counter() - self.started)


class RequestPath:
    """The request path of one ModelServer (see the module docstring)."""

    def __init__(self, manager, metrics: Metrics, admission: Admission,
                 max_request_bytes: int, max_response_bytes: int,
                 check_method_names: bool = False, request_log=None):
        self.manager, self.metrics, self.admission = manager, metrics, admission
        self.request_log = request_log  # RequestLog or None
        self.max_request_bytes = max_request_bytes
        self.max_response_bytes = max_response_bytes
        self.check_method_names = check_method_names

    def _check_response(self, size: int) -> None:
        if size > self.max_response_bytes:
            raise StatusError(Code.RESOURCE_EXHAUSTED,
                              f"response of {size} bytes exceeds the limit of "
                              f"{self.max_response_bytes} bytes (--max_response_bytes)")

    def predict(self, call: Call, decode: Callable[[Any], dict[str, np.ndarray]],
                output_filter=(), prepare: Callable[[], str] | None = None):
        """Predict: ``prepare()`` (optional) reads the signature name from the request's
        body; ``decode(signature_def)`` turns the request's inputs into arrays.  Returns
        (servable, signature key, outputs)."""
        with _Observed(self.metrics, call) as seen:
            if prepare is not None:
                call.signature = prepare()
                seen.signature = call.signature or DEFAULT_SIGNATURE
            call.remaining_ms()
            servable = self.manager.handle(call.name, call.version, call.label)
            seen.version = servable.version
            key, sd = servable.signature(call.signature)
            seen.signature = key
            inputs = decode(sd)
            servable.check_inputs(key, inputs)
            ticket = self.admission.enter(call, request_cost(sd, inputs))
            try:
                timeout_ms = call.remaining_ms()
                outputs = servable.run(key, inputs, output_filter, timeout_ms,
                                       deadline=call.deadline)
            finally:
                self.admission.leave(ticket)
            self._check_response(response_bytes(outputs))
            if self.request_log is not None:
                self.request_log.offer("predict", servable, key,
                                       (inputs, outputs, tuple(output_filter)))
            return servable, key, outputs

    def infer(self, call: Call, request, prepare: Callable[[], Any] | None = None):
        """Classify, Regress or MultiInference (``call.kind``); ``prepare()`` (optional)
        fills ``request`` from the body first."""
        from tfdeploy.serving import inference

        with _Observed(self.metrics, call) as seen:
            if prepare is not None:
                prepare()
            spec = getattr(request, "model_spec", None)
            if spec is not None:
                call.signature = spec.signature_name
                seen.signature = call.signature or DEFAULT_SIGNATURE
            call.remaining_ms()
            servable = self.manager.handle(call.name, call.version, call.label)
            seen.version = servable.version
            cost = max(1, request.input.ByteSize())
            ticket = self.admission.enter(call, cost)
            try:
                timeout_ms = call.remaining_ms()
                if call.kind == "multi_inference":
                    response = inference.multi_inference(servable, request,
                                                         self.check_method_names, timeout_ms)
                else:
                    response = inference.classify_or_regress(
                        call.kind, servable, request, self.check_method_names, timeout_ms)
            finally:
                self.admission.leave(ticket)
            self._check_response(response.ByteSize())
            if self.request_log is not None:
                self.request_log.offer(call.kind, servable, seen.signature,
                                       (request, response))
            return response
