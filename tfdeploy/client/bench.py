"""Load generator behind ``tfdeploy bench``: latency percentiles, throughput and errors per
concurrency level, like Triton's perf_analyzer, for either signature and transport."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from tfdeploy.client.base import ClientError
from tfdeploy.client.predict import ENCODED, Predictor


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
    before = dict(predictor.transport.counts)
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
    after = predictor.transport.counts
    return LevelResult(
        concurrency=concurrency, requests=len(latencies) + sum(errors.values()),
        errors=sum(errors.values()), seconds=round(seconds, 3),
        throughput=round(len(latencies) / seconds, 2) if seconds else 0.0,
        p50_ms=pct(50), p90_ms=pct(90), p99_ms=pct(99),
        error_samples=[f"{n}x {msg}" for msg, n in errors.most_common(3)],
        endpoints={k: after[k] - before.get(k, 0) for k in after},
    )


COLUMNS = f"{'conc':>5} {'reqs':>6} {'errs':>5} {'req/s':>8} {'p50 ms':>9} {'p90 ms':>9} " \
          f"{'p99 ms':>9}"


def format_level(r: LevelResult) -> str:
    """One table row (under ``COLUMNS``) for a level."""

    def ms(v: float | None) -> str:
        return f"{v:9.1f}" if v is not None else f"{'-':>9}"

    return (f"{r.concurrency:>5} {r.requests:>6} {r.errors:>5} {r.throughput:>8.2f} "
            f"{ms(r.p50_ms)} {ms(r.p90_ms)} {ms(r.p99_ms)}")


def parse_levels(text: str) -> list[int]:
    """``"1,4,8"`` -> [1, 4, 8]; ValueError naming the problem otherwise."""
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError("use comma-separated integers, e.g. 1,4,8") from None
    if not levels or min(levels) < 1:
        raise ValueError("concurrency levels must be >= 1")
    return levels


def describe_input(predictor: Predictor, image) -> str:
    h, w = image.size
    kind = "encoded image" if predictor.signature == ENCODED else "float32 pixels"
    return f"{predictor.signature} ({kind}, {w}x{h})"
