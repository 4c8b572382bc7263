"""Prometheus metrics of the embedded server, served on the REST port at the path of the
``--monitoring_config_file`` (TF Serving's convention: /monitoring/prometheus/metrics).

Names follow TF Serving's ``:tensorflow:serving:*`` family so existing dashboards match.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
_LABELS = ("model_name", "model_version", "signature_name", "api")
_LATENCY_BUCKETS_US = (500, 1e3, 2.5e3, 5e3, 1e4, 2.5e4, 5e4, 1e5, 2.5e5, 5e5, 1e6, 2.5e6,
                       5e6, 1e7)


class Metrics:
    def __init__(self) -> None:
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

    def observe(self, model: str, version: int | str, signature: str, api: str,
                status: str, seconds: float) -> None:
        labels = (model, str(version), signature, api)
        self.requests.labels(*labels, status).inc()
        if status != "OK":
            self.errors.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds * 1e6)

    def observe_batch(self, servable, signature: str, size: int, requests: int) -> None:
        labels = (servable.name, str(servable.version), signature)
        self.batch_size.labels(*labels).observe(size)
        if requests > 1:
            self.batched_requests.labels(*labels).inc(requests)

    def render(self) -> bytes:
        return generate_latest(self.registry)
