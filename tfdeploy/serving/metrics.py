"""Prometheus metrics of the embedded server, served on the REST port at the path of the
``--monitoring_config_file`` (TF Serving's convention: /monitoring/prometheus/metrics).

Names follow TF Serving's ``:tensorflow:serving:*`` family so existing dashboards match.

Label values come only from what the operator configured: the models of the config in force
and the signatures their loaded versions have.  Any other model or signature name a client
sends counts under UNKNOWN_LABEL, so a client cannot grow ``/metrics`` (and the server's
memory) by asking for random names.  tensorflow_model_server labels its request count with
whatever model name the request carried; it has no fixed value for unknown names, so
UNKNOWN_LABEL is ours.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
_LABELS = ("model_name", "model_version", "signature_name", "api")
#: the label value of every model or signature name that is not configured / loaded
UNKNOWN_LABEL = "__unknown__"
_LATENCY_BUCKETS_US = (500, 1e3, 2.5e3, 5e3, 1e4, 2.5e4, 5e4, 1e5, 2.5e5, 5e5, 1e6, 2.5e6,
                       5e6, 1e7)


class Metrics:
    def __init__(self) -> None:
        #: configured model -> signature keys of its loaded versions: the only label values
        self._known: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        self.registry = CollectorRegistry()
        self.requests = Counter(":tensorflow:serving:request_count",
                                "Requests by model, version, signature, API and status.",
                                _LABELS + ("status",), registry=self.registry)
        self.errors = Counter(":tensorflow:serving:request_error_count",
                              "Failed requests by model, version, signature and API.",
                              _LABELS, registry=self.registry)
        self.latency = Histogram(":tensorflow:serving:request_latency",
                                 "Request latency in microseconds.", _LABELS,
                                 buckets=_LATENCY_BUCKETS_US, registry=self.registry)
        self.batch_size = Histogram(":tensorflow:serving:batching_session:batch_size",
                                    "Examples per executed batch.",
                                    ("model_name", "model_version", "signature_name"),
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
                                    registry=self.registry)
        self.batched_requests = Counter(
            ":tensorflow:serving:batching_session:merged_request_count",
            "Requests that ran merged with others in one batch.",
            ("model_name", "model_version", "signature_name"), registry=self.registry)

    # -- known names (the server keeps them current) ------------------------------------
    def set_models(self, names: Iterable[str]) -> None:
        """The models of the config now in force (hook: the server applies a config).
        Models that stay keep the signatures learned from their versions."""
        with self._lock:
            self._known = {name: self._known.get(name, set()) for name in names}

    def servable_loaded(self, servable) -> None:
        """A version became loadable (hook: a version loads): its signature keys become
        label values of its model, if that model is configured."""
        with self._lock:
            known = self._known.get(servable.name)
            if known is not None:
                known.update(servable.signature_defs)

    def labels_for(self, model: str, signature: str) -> tuple[str, str]:
        """(model, signature) as label values: configured names as they are, any other
        name UNKNOWN_LABEL."""
        with self._lock:
            known = self._known.get(model)
            if known is None:
                return UNKNOWN_LABEL, UNKNOWN_LABEL
            return model, signature if signature in known else UNKNOWN_LABEL

    # -- recording -----------------------------------------------------------------------
    def observe(self, model: str, version: int | str, signature: str, api: str,
                status: str, seconds: float) -> None:
        model, signature = self.labels_for(model, signature)
        if model == UNKNOWN_LABEL:
            version = ""
        labels = (model, str(version), signature, api)
        self.requests.labels(*labels, status).inc()
        if status != "OK":
            self.errors.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds * 1e6)

    def observe_batch(self, servable, signature: str, size: int, requests: int) -> None:
        model, signature = self.labels_for(servable.name, signature)
        labels = (model, str(servable.version), signature)
        self.batch_size.labels(*labels).observe(size)
        if requests > 1:
            self.batched_requests.labels(*labels).inc(requests)

    def render(self) -> bytes:
        return generate_latest(self.registry)
