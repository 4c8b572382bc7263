"""Load generator behind ``tfdeploy bench``, measuring the way Triton's perf_analyzer does
(``--service-kind=tfserving``): warm-up requests that are not counted, then measurement
windows repeated until three in a row agree (throughput and average latency within
``stability`` percent of their mean), for each concurrency level (closed loop: N
clients, each sending its next request when the last one answers) or request rate (open
loop: requests sent on a fixed schedule, whether or not earlier ones answered).

The inputs cycle through several images, so caches and image sizes do not flatter one
picture.  A level that never stabilises is reported as such, not hidden.
"""

from __future__ import annotations

import csv
import io
import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from tfdeploy.client.base import ClientError
from tfdeploy.client.images import LoadedImage
from tfdeploy.client.predict import ENCODED, Predictor

#: windows that must agree before a level counts as stable (perf_analyzer's choice)
STABLE_WINDOWS = 3


@dataclass
class LevelResult:
    concurrency: int | None  # closed loop
    request_rate: float | None  # open loop (requests/s asked for)
    requests: int
    errors: int
    seconds: float
    throughput: float
    p50_ms: float | None
    p90_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    avg_ms: float | None
    #: three windows agreed; None for a fixed window (``duration`` / ``requests``), where
    #: no stability check ran
    stable: bool | None
    windows: int
    error_samples: list[str] = field(default_factory=list)
    endpoints: dict[str, int] = field(default_factory=dict)

    @property
    def level(self) -> str:
        if self.concurrency is not None:
            return str(self.concurrency)
        return f"{self.request_rate:g}/s"

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class _Sample:
    done: float  # perf_counter when the answer (or error) came
    latency: float
    error: str | None


class _Load:
    """Keeps sending requests (closed or open loop) and records every answer."""

    def __init__(self, predictor: Predictor, inputs: Sequence[LoadedImage],
                 concurrency: int | None, rate: float | None, max_threads: int,
                 budget: int | None = None):
        self.predictor = predictor
        self._inputs = itertools.cycle(inputs)
        self.samples: list[_Sample] = []
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.concurrency, self.rate, self.max_threads = concurrency, rate, max_threads
        self.late = 0  # open loop: requests sent after their scheduled time (no thread free)
        self.budget = budget  # requests to send in all, None = until stopped
        self._threads: list[threading.Thread] = []
        self._pool: ThreadPoolExecutor | None = None

    def _next_input(self) -> LoadedImage:
        with self.lock:
            return next(self._inputs)

    def _take(self) -> bool:
        """One more request may go (the budget is not spent)."""
        with self.lock:
            if self.budget is None:
                return True
            if self.budget <= 0:
                return False
            self.budget -= 1
            return True

    def _one(self) -> None:
        image = self._next_input()
        t = time.perf_counter()
        error = None
        try:
            self.predictor.infer(image)
        except ClientError as exc:
            error = str(exc)
        done = time.perf_counter()
        with self.lock:
            self.samples.append(_Sample(done, done - t, error))

    def _closed(self) -> None:
        while not self.stop_event.is_set() and self._take():
            self._one()

    def _open(self) -> None:
        assert self.rate and self._pool is not None
        interval, start = 1.0 / self.rate, time.perf_counter()
        busy = threading.Semaphore(self.max_threads)
        for i in itertools.count():
            wait = start + i * interval - time.perf_counter()
            if wait > 0 and self.stop_event.wait(wait):
                return
            if self.stop_event.is_set() or not self._take():
                return
            if not busy.acquire(blocking=False):
                with self.lock:
                    self.late += 1
                busy.acquire()
            future = self._pool.submit(self._one)
            future.add_done_callback(lambda _f: busy.release())

    def start(self) -> None:
        if self.rate:
            self._pool = ThreadPoolExecutor(self.max_threads, thread_name_prefix="bench")
            self._threads = [threading.Thread(target=self._open, daemon=True)]
        else:
            self._threads = [threading.Thread(target=self._closed, daemon=True)
                             for _ in range(self.concurrency or 1)]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.join()

    def join(self) -> None:
        """Wait for the senders (they end by themselves once a budget is spent)."""
        for t in self._threads:
            t.join()
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def count(self) -> int:
        with self.lock:
            return len(self.samples)

    def since(self, t0: float, t1: float = float("inf")) -> list[_Sample]:
        with self.lock:
            return [s for s in self.samples if t0 <= s.done < t1]


def _stats(samples: list[_Sample], seconds: float) -> dict:
    import numpy as np

    ok = [s.latency for s in samples if s.error is None]
    ms = np.array(ok) * 1e3

    def pct(q: float) -> float | None:
        return round(float(np.percentile(ms, q)), 2) if len(ms) else None

    return {"requests": len(samples), "errors": len(samples) - len(ok),
            "seconds": round(seconds, 3),
            "throughput": round(len(ok) / seconds, 2) if seconds else 0.0,
            "p50_ms": pct(50), "p90_ms": pct(90), "p95_ms": pct(95), "p99_ms": pct(99),
            "avg_ms": round(float(ms.mean()), 2) if len(ms) else None}


def is_stable(windows: list[dict], percent: float) -> bool:
    """The last STABLE_WINDOWS windows agree: throughput and average latency each within
    ``percent`` of their mean (perf_analyzer's rule), and every window answered."""
    if len(windows) < STABLE_WINDOWS:
        return False
    last = windows[-STABLE_WINDOWS:]
    for key in ("throughput", "avg_ms"):
        values = [w[key] for w in last]
        if any(v is None or v <= 0 for v in values):
            return False
        mean = sum(values) / len(values)
        if any(abs(v - mean) > mean * percent / 100 for v in values):
            return False
    return True


def run_level(predictor: Predictor, inputs: Sequence[LoadedImage], *,
              concurrency: int | None = 1, request_rate: float | None = None,
              warmup: int = 5, interval: float = 2.0, stability: float = 10.0,
              max_trials: int = 10, duration: float | None = None,
              requests: int | None = None, max_threads: int = 16) -> LevelResult:
    """Measure one level.  Default: windows of ``interval`` seconds until stable (at most
    ``max_trials``); ``duration`` (seconds) or ``requests`` (count) instead measure one
    fixed window and make no stability claim."""
    before = dict(predictor.transport.counts)
    load = _Load(predictor, inputs, None if request_rate else concurrency, request_rate,
                 max_threads, budget=warmup + requests if requests is not None else None)
    load.start()
    windows: list[dict] = []
    bounds: list[tuple[float, float]] = []
    try:
        deadline = time.perf_counter() + max(30.0, interval * 5)
        while load.count() < warmup and time.perf_counter() < deadline:
            time.sleep(0.005)
        t0 = time.perf_counter()
        if requests is not None:  # exactly ``requests`` more, then the senders end
            load.join()
            bounds.append((t0, time.perf_counter()))
        elif duration is not None:
            time.sleep(duration)
            bounds.append((t0, time.perf_counter()))
        else:
            while len(windows) < max_trials:
                t0 = time.perf_counter()
                time.sleep(interval)
                t1 = time.perf_counter()
                windows.append(_stats(load.since(t0, t1), t1 - t0))
                bounds.append((t0, t1))
                if is_stable(windows, stability):
                    break
    finally:
        load.stop()
    fixed = duration is not None or requests is not None
    if requests is not None:
        samples = sorted(load.samples, key=lambda s: s.done)[warmup:]
        seconds = max((s.done for s in samples), default=t0) - bounds[0][0]
    else:
        used = bounds if fixed else bounds[-STABLE_WINDOWS:]
        samples = [s for a, b in used for s in load.since(a, b)]
        seconds = sum(b - a for a, b in used)
    if fixed:
        windows = [_stats(samples, seconds)]
    merged = _stats(samples, seconds)
    errors = Counter(s.error for s in samples if s.error)
    after = predictor.transport.counts
    return LevelResult(concurrency=None if request_rate else concurrency,
                       request_rate=request_rate,
                       stable=None if fixed else is_stable(windows, stability),
                       windows=len(windows),
                       error_samples=[f"{n}x {m}" for m, n in errors.most_common(3)],
                       endpoints={k: after[k] - before.get(k, 0) for k in after}, **merged)


def run(predictor: Predictor, inputs: Sequence[LoadedImage], *,
        concurrency: Sequence[int] = (1,), request_rates: Sequence[float] = (),
        on_level: Callable[[LevelResult], None] | None = None, **options) -> list[LevelResult]:
    """Every concurrency level, or every request rate when given; ``options`` as for
    ``run_level``.  ``on_level`` sees each result as soon as it is measured."""
    results = []
    levels = [{"request_rate": r, "concurrency": None} for r in request_rates] or \
             [{"concurrency": c} for c in concurrency]
    for level in levels:
        result = run_level(predictor, inputs, **level, **options)
        results.append(result)
        if on_level:
            on_level(result)
    return results


COLUMNS = (f"{'level':>7} {'reqs':>6} {'errs':>5} {'req/s':>8} {'p50 ms':>8} {'p90 ms':>8} "
           f"{'p95 ms':>8} {'p99 ms':>8} {'avg ms':>8}  stable")
CSV_FIELDS = ["concurrency", "request_rate", "requests", "errors", "seconds", "throughput",
              "p50_ms", "p90_ms", "p95_ms", "p99_ms", "avg_ms", "stable", "windows"]


def format_level(r: LevelResult) -> str:
    """One table row (under ``COLUMNS``) for a level."""

    def ms(v: float | None) -> str:
        return f"{v:8.1f}" if v is not None else f"{'-':>8}"

    stable = ("fixed" if r.stable is None else "yes" if r.stable
              else f"NO (after {r.windows} windows)")
    return (f"{r.level:>7} {r.requests:>6} {r.errors:>5} {r.throughput:>8.2f} "
            f"{ms(r.p50_ms)} {ms(r.p90_ms)} {ms(r.p95_ms)} {ms(r.p99_ms)} {ms(r.avg_ms)}"
            f"  {stable}")


def to_csv(results: Sequence[LevelResult]) -> str:
    """perf_analyzer-style CSV: one row per level, latencies in ms."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in results:
        writer.writerow(r.to_json())
    return buf.getvalue()


def parse_levels(text: str) -> list[int]:
    """``"1,4,8"`` or perf_analyzer's ``"START:END[:STEP]"`` -> [1, 4, 8]; ValueError
    naming the problem otherwise."""
    return [int(v) for v in _parse_range(text, int)]


def parse_rates(text: str) -> list[float]:
    """``"10,20"`` or ``"10:50:10"`` requests per second."""
    return _parse_range(text, float)


def _parse_range(text: str, kind: type) -> list:
    try:
        if ":" in text:
            parts = [kind(x) for x in text.split(":")]
            if len(parts) not in (2, 3):
                raise ValueError
            start, end = parts[0], parts[1]
            step = parts[2] if len(parts) == 3 else kind(1)
            if step <= 0 or end < start:
                raise ValueError
            values, v = [], start
            while v <= end + 1e-9:
                values.append(v)
                v += step
        else:
            values = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError("use comma-separated values (1,4,8) or START:END[:STEP]") from None
    if not values or min(values) <= 0:
        raise ValueError("values must be > 0")
    return values


def load_inputs(items: Sequence[str]) -> list[LoadedImage]:
    """Files, directories and globs -> decoded images to cycle through; ``PredictError``
    naming what is missing or unreadable (checked before any request is sent)."""
    from tfdeploy.client.images import BadImage, load
    from tfdeploy.client.predict import PredictError, expand, missing_inputs

    missing = missing_inputs(items)
    if missing:
        raise PredictError(f"no such file or directory: {', '.join(missing)}")
    jobs = expand(items)
    if not jobs:
        raise PredictError("no images found in " + " ".join(items))
    loaded = []
    for job in jobs:
        try:
            loaded.append(load(job.path))
        except BadImage as exc:
            raise PredictError(f"{job.path}: {exc}") from None
    return loaded


def describe_input(predictor: Predictor, inputs: Sequence[LoadedImage]) -> str:
    kind = "encoded image" if predictor.signature == ENCODED else "float32 pixels"
    sizes = sorted({f"{i.size[1]}x{i.size[0]}" for i in inputs})
    what = f"{len(inputs)} images" if len(inputs) > 1 else "1 image"
    return f"{predictor.signature} ({kind}; {what}, {', '.join(sizes[:3])}" \
           f"{', ...' if len(sizes) > 3 else ''})"


@dataclass
class LoggedInputs:
    """What ``bench --from-log`` replays: the logged images, and how many logged
    ``class_names`` requests were left out (a client asks for the class names once,
    lazily, to name mask classes: they are not the traffic to measure)."""

    images: list[LoadedImage]
    class_names: int = 0


def load_logged_inputs(log: str) -> LoggedInputs:
    """The images of a request log (``tfdeploy requests``), decoded, to replay: what real
    traffic sent, not the demo images; ``class_names`` requests are counted and left
    out.  ``PredictError`` when it has no image."""
    import tempfile

    from tfdeploy.client import request_log
    from tfdeploy.client.predict import PredictError
    from tfdeploy.tfs.names import CLASS_NAMES

    with tempfile.TemporaryDirectory(prefix="tfdeploy-log-") as tmp:
        try:
            names = sum(1 for e in request_log.entries(log) if e.signature == CLASS_NAMES)
            rows = [r for r in request_log.export(log, tmp, masks=False)
                    if r["signature"] != CLASS_NAMES]
        except request_log.LogError as exc:
            raise PredictError(str(exc)) from None
        if not rows:
            also = (f" ({names} class_names request{'s' if names != 1 else ''} left "
                    "out)" if names else "")
            raise PredictError(f"{log}: no logged Predict request has an image to "
                               f"replay{also}")
        return LoggedInputs(load_inputs([r["image"] for r in rows]), names)
