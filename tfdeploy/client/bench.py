"""Load generator behind ``tfdeploy bench``: latency percentiles, throughput and errors per
concurrency level, like Triton's perf_analyzer, for either signature and transport."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from tfdeploy.client.predict import ENCODED, Predictor
from tfdeploy.client.transport import ClientError


@dataclass
class LevelResult:
    concurrency: int
    requests: int
    errors: int
    seconds: float
    throughput: float
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    error_samples: list[str] = field(default_factory=list)
    endpoints: dict[str, int] = field(default_factory=dict)


def run_level(predictor: Predictor, image, concurrency: int, duration: float | None,
              requests: int | None) -> LevelResult:
    """Closed loop: ``concurrency`` workers each send the next request when the last one
    answers, until ``duration`` seconds or ``requests`` requests in total."""
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    lock = threading.Lock()
    budget = [requests if requests is not None else float("inf")]
    before = dict(predictor.transport.endpoints.counts)
    deadline = time.perf_counter() + (duration if duration is not None else float("inf"))

    def worker():
        while time.perf_counter() < deadline:
            with lock:
                if budget[0] <= 0:
                    return
                budget[0] -= 1
            t = time.perf_counter()
            try:
                predictor.infer(image)
            except ClientError as exc:
                with lock:
                    errors[str(exc)] += 1
                continue
            with lock:
                latencies.append(time.perf_counter() - t)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    import numpy as np

    ms = np.array(latencies) * 1e3
    pct = (lambda q: round(float(np.percentile(ms, q)), 2)) if len(ms) else (lambda q: None)
    after = predictor.transport.endpoints.counts
    return LevelResult(
        concurrency=concurrency, requests=len(latencies) + sum(errors.values()),
        errors=sum(errors.values()), seconds=round(seconds, 3),
        throughput=round(len(latencies) / seconds, 2) if seconds else 0.0,
        p50_ms=pct(50), p90_ms=pct(90), p99_ms=pct(99),
        error_samples=[f"{n}x {msg}" for msg, n in errors.most_common(3)],
        endpoints={k: after[k] - before.get(k, 0) for k in after},
    )


def describe_input(predictor: Predictor, image) -> str:
    h, w = image.size
    kind = "encoded image" if predictor.signature == ENCODED else "float32 pixels"
    return f"{predictor.signature} ({kind}, {w}x{h})"
