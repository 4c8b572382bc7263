"""Several endpoints behind one Transport: round robin, failover and retries, once.

The transports below send one call to one address; this layer decides where each call
goes and what happens when it fails, so the policy is the same for gRPC and REST.  Calls
are idempotent (Predict, metadata, status), so a call that fails with a retryable code is
sent again: to the next endpoint when there are several (the failed one is skipped for a
cool-down), or to the same one after an exponential backoff.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from typing import TYPE_CHECKING, TypeVar

from tfdeploy.client.base import ClientError, Transport
from tfdeploy.client.defaults import DEFAULT_RETRIES, DEFAULT_RETRY_TIMEOUT, DEFAULT_TIMEOUT
from tfdeploy.client.tls import TlsConfig
from tfdeploy.tfs.names import DEFAULT_PORTS, SERVING_DEFAULT
from tfdeploy.tfs.saved_model import Signature

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger("tfdeploy.client")
T = TypeVar("T")

TRANSPORTS = ("grpc", "rest")
#: TF Serving's API, or the Open Inference Protocol (KServe v2)
PROTOCOLS = ("v1", "v2")


def parse_addresses(items: Iterable[str], transport: str) -> list[str]:
    """``--server`` style values (repeatable, comma-separated) -> ``host:port`` list; a
    bare host gets the transport's default port."""
    out: list[str] = []
    for item in items:
        for part in item.split(","):
            part = part.strip()
            if part:
                has_port = ":" in part.rsplit("]", 1)[-1]
                out.append(part if has_port else f"{part}:{DEFAULT_PORTS[transport]}")
    return out


class Endpoints:
    """Round robin over addresses; one that failed is skipped for a cool-down while
    others are up.  The cool-down doubles with each failure in a row (``cooldown`` up to
    ``max_cooldown`` seconds), so a hung endpoint costs one deadline per cool-down, not
    one per request.  ``counts`` says how many calls each one served."""

    def __init__(self, addresses: list[str], cooldown: float = 5.0,
                 max_cooldown: float = 60.0, clock: Callable[[], float] = time.monotonic):
        if not addresses:
            raise ValueError("no server endpoint given")
        self.addresses = list(addresses)
        self.counts = dict.fromkeys(self.addresses, 0)
        self.cooldown, self.max_cooldown, self._clock = cooldown, max_cooldown, clock
        self._cycle = itertools.cycle(self.addresses)
        self._lock = threading.Lock()
        self._down_until: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        #: addresses that answered at least once (a refusal there means a restart)
        self.answered: set[str] = set()

    def _up(self, address: str, now: float) -> bool:
        return self._down_until.get(address, 0) <= now

    def pick(self) -> str:
        """The next address that is up; when all are down, the one back soonest."""
        with self._lock:
            now = self._clock()
            for _ in range(len(self.addresses)):
                address = next(self._cycle)
                if self._up(address, now):
                    return address
            return min(self.addresses, key=lambda a: self._down_until.get(a, 0))

    def any_up(self) -> bool:
        with self._lock:
            now = self._clock()
            return any(self._up(a, now) for a in self.addresses)

    def mark_down(self, address: str) -> None:
        if len(self.addresses) == 1:
            return  # nothing to fail over to: the pool backs off instead
        with self._lock:
            now = self._clock()
            failures = self._failures.get(address, 0) + 1
            self._failures[address] = failures
            seconds = min(self.cooldown * 2 ** (failures - 1), self.max_cooldown)
            if self._up(address, now):
                log.warning("endpoint %s failed; using the others for %.0fs", address, seconds)
            self._down_until[address] = now + seconds

    def served(self, address: str) -> None:
        with self._lock:
            self.counts[address] += 1
            self._failures.pop(address, None)
            self.answered.add(address)


class EndpointPool(Transport):
    """A Transport over one or more endpoints, with the retry policy above.

    Each attempt has the transports' own deadline (``timeout``); a retryable failure
    (``Code.retryable``: UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED) is sent again, at
    once to another endpoint that is up, else after an exponential backoff (``backoff``
    doubling up to ``max_backoff`` seconds), until ``retries`` retries or
    ``retry_timeout`` seconds are spent retrying (counted from the first failure: an
    attempt that ran long before failing, e.g. on a replica being stopped, still gets
    its failover)."""

    def __init__(self, transports: Mapping[str, Transport], retries: int = DEFAULT_RETRIES,
                 retry_timeout: float = DEFAULT_RETRY_TIMEOUT, backoff: float = 0.2,
                 max_backoff: float = 2.0, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic):
        if not transports:
            raise ValueError("no server endpoint given")
        if retries < 0 or retry_timeout < 0:
            raise ValueError("retries and retry_timeout must not be negative")
        self.transports = dict(transports)
        first = next(iter(self.transports.values()))
        self.name, self.protocol = first.name, first.protocol
        self.lists_every_signature = first.lists_every_signature
        self.endpoints = Endpoints(list(self.transports), clock=clock)
        self.retries, self.retry_timeout = retries, retry_timeout
        self.backoff, self.max_backoff = backoff, max_backoff
        self._sleep, self._clock = sleep, clock

    @property
    def addresses(self) -> list[str]:
        return self.endpoints.addresses

    @property
    def counts(self) -> dict[str, int]:
        return self.endpoints.counts

    def call(self, fn: Callable[[Transport], T]) -> T:
        """``fn(transport)`` on the next endpoint, retried as the class says; the last
        error is raised when the budget is spent, saying how much was tried."""
        started = None  # the first failure: the budget is for retries, and the first
        failures = 0    # attempt has its own deadline (a slow one must not eat the budget)
        while True:
            address = self.endpoints.pick()
            try:
                result = fn(self.transports[address])
            except ClientError as exc:
                if not exc.retryable:
                    raise
                if exc.refused and not self.endpoints.answered and not (
                        len(self.addresses) > 1 and failures < len(self.addresses)):
                    # No endpoint of this pool ever answered and none accepts a
                    # connection: most likely no server runs there; say so now instead
                    # of backing off for the whole budget (a restart, where the endpoint
                    # answered before, still gets it).
                    raise
                failures += 1
                self.endpoints.mark_down(address)
                failover = len(self.addresses) > 1 and self.endpoints.any_up()
                pause = 0.0 if failover else min(self.backoff * 2 ** (failures - 1),
                                                 self.max_backoff)
                now = self._clock()
                started = now if started is None else started
                spent = now - started
                if failures > self.retries or spent + pause > self.retry_timeout:
                    if failures > 1:
                        exc.message += (f" (gave up after {failures} attempts, "
                                        f"{spent:.1f}s of retries)")
                    raise
                if pause:
                    self._sleep(pause)
                continue
            self.endpoints.served(address)
            return result

    def metadata(self, model: str, version: int | None = None) -> dict[str, Signature]:
        return self.call(lambda t: t.metadata(model, version))

    def status(self, model: str, version: int | None = None) -> dict[int, str]:
        return self.call(lambda t: t.status(model, version))

    def predict(self, model, signature, inputs, version=None, outputs=None,
                output_dtypes=None) -> dict[str, np.ndarray]:
        return self.call(lambda t: t.predict(model, signature, inputs, version, outputs,
                                             output_dtypes))

    def predict_png(self, model: str, image: bytes, version: int | None = None,
                    signature: str = SERVING_DEFAULT) -> bytes:
        return self.call(lambda t: t.predict_png(model, image, version, signature))

    def predict_async(self, model, signature, inputs, version=None, outputs=None,
                      output_dtypes=None) -> Future:
        """The endpoint transport's asynchronous call; a retryable failure is sent again
        through ``predict`` (with the usual failover and backoff)."""
        address = self.endpoints.pick()
        first = self.transports[address].predict_async(model, signature, inputs, version,
                                                       outputs, output_dtypes)
        result: Future = Future()

        def done(f: Future) -> None:
            exc = f.exception()
            if exc is None:
                self.endpoints.served(address)
                result.set_result(f.result())
                return
            if isinstance(exc, ClientError) and exc.retryable:
                self.endpoints.mark_down(address)
                try:
                    result.set_result(self.predict(model, signature, inputs, version,
                                                   outputs, output_dtypes))
                except ClientError as again:
                    result.set_exception(again)
                return
            result.set_exception(exc)

        first.add_done_callback(done)
        return result

    def close(self) -> None:
        for transport in self.transports.values():
            transport.close()


def connect(addresses: str | Iterable[str], transport: str = "grpc",
            timeout: float = DEFAULT_TIMEOUT,
            retries: int = DEFAULT_RETRIES,
            retry_timeout: float = DEFAULT_RETRY_TIMEOUT,
            protocol: str = "v1", tls: TlsConfig | None = None) -> EndpointPool:
    """An EndpointPool over ``addresses`` (``host[:port]``, or several comma-separated)
    speaking ``transport`` (``grpc`` or ``rest``); ``timeout`` is each attempt's deadline
    at one endpoint, ``retries`` / ``retry_timeout`` bound the retries of a call.
    ``protocol`` ``v1`` is TF Serving's API, ``v2`` the Open Inference Protocol (over
    either transport: ``client/v2_transport.py``, ``client/v2_grpc_transport.py``);
    ``tls`` makes it gRPC over TLS / REST over HTTPS."""
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    items = [addresses] if isinstance(addresses, str) else list(addresses)
    parsed = parse_addresses(items, transport)
    if protocol == "v2" and transport == "grpc":
        from tfdeploy.client.v2_grpc_transport import V2GrpcTransport as cls
    elif protocol == "v2":
        from tfdeploy.client.v2_transport import V2RestTransport as cls
    elif transport == "grpc":
        from tfdeploy.client.grpc_transport import GrpcTransport as cls
    else:
        from tfdeploy.client.rest_transport import RestTransport as cls
    extra = {"tls": tls} if tls is not None else {}
    return EndpointPool({a: cls(a, timeout=timeout, **extra) for a in dict.fromkeys(parsed)},
                        retries=retries, retry_timeout=retry_timeout)
