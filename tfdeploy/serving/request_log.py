"""Request logging: each model's ``logging_config`` (TF Serving's ModelConfig field) samples
its inference requests and appends them, with their responses, as ``PredictionLog``
records to TFRecord files.

tensorflow_model_server declares this config but its open-source build has no logger and
refuses it at start-up ("No request-logger-creator provided"); the embedded server
implements it:

- ``sampling_config { sampling_rate }``: each request is logged with that probability;
- ``log_collector_config { type: "file" filename_prefix: "/logs/deeplab" }``: TF Serving
  leaves the collector type open; ours is ``file`` (files ``PREFIX.<ns>.tfrecord``, one
  started per ``--request_log_max_file_bytes``, the oldest removed past
  ``--request_log_max_total_bytes``);
- records are PredictionLog (predict/classify/regress/multi_inference) with
  ``log_metadata`` (model spec with version and signature, the sampling config, the
  SavedModel tags, a timestamp): the format of ``assets.extra/tf_serving_warmup_requests``,
  so a log can be replayed as warmup.

The request path only samples and enqueues (``put_nowait`` on a bounded queue): protos are
built, framed and written by one writer thread.  When the queue is full the record is
dropped and counted (``:tfdeploy:request_log:dropped_count``); a request never waits for
the log.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import Counter

from tfdeploy.tfs import protos, tensors, tfrecord
from tfdeploy.tfs.codes import Code, StatusError

log = logging.getLogger("tfdeploy.serving")

#: collector types the embedded server writes (TF Serving leaves the type open)
COLLECTOR_TYPES = ("file",)
SUFFIX = ".tfrecord"


@dataclass(frozen=True)
class LogSink:
    """Where and how often one model's requests are logged (its ``logging_config``)."""

    prefix: Path
    sampling_rate: float
    sampling_config: Any  # SamplingConfig proto, copied into each record's log_metadata


def sink_of(model_config) -> LogSink | None:
    """A model's LogSink, None without ``logging_config``; a config we cannot honour is a
    StatusError (INVALID_ARGUMENT) so it stops start-up or a reload, never ignored."""
    if not model_config.HasField("logging_config"):
        return None
    lc, name = model_config.logging_config, model_config.name
    rate = lc.sampling_config.sampling_rate
    if not 0.0 <= rate <= 1.0:
        raise StatusError(Code.INVALID_ARGUMENT,
                          f"Model {name}: logging_config sampling_rate {rate} is not in "
                          "[0, 1]")
    unsupported = [f.name for f, _ in lc.ListFields()
                   if f.name not in ("log_collector_config", "sampling_config")]
    unsupported += [f"sampling_config.{f.name}" for f, _ in lc.sampling_config.ListFields()
                    if f.name != "sampling_rate"]
    if unsupported:  # honoured or refused, never ignored
        raise StatusError(Code.INVALID_ARGUMENT,
                          f"Model {name}: logging_config {unsupported[0]} is not supported by "
                          "tfdeploy-model-server (supported: sampling_config.sampling_rate, "
                          "log_collector_config)")
    collector = lc.log_collector_config
    if collector.type not in COLLECTOR_TYPES:
        raise StatusError(Code.INVALID_ARGUMENT,
                          f"Model {name}: log_collector_config type {collector.type!r} is "
                          f"not supported by tfdeploy-model-server (supported: "
                          f"{', '.join(COLLECTOR_TYPES)})")
    prefix = Path(collector.filename_prefix)
    if not collector.filename_prefix or not prefix.is_absolute():
        raise StatusError(Code.INVALID_ARGUMENT,
                          f"Model {name}: log_collector_config filename_prefix must be an "
                          f"absolute path; got {collector.filename_prefix!r}")
    return LogSink(prefix, rate, type(lc.sampling_config).FromString(
        lc.sampling_config.SerializeToString()))


def log_files(prefix: Path) -> list[Path]:
    """A sink's files, oldest first (their names carry the time they were started)."""
    if not prefix.parent.is_dir():
        return []
    files = [p for p in prefix.parent.glob(prefix.name + ".*" + SUFFIX)
             if p.name[len(prefix.name) + 1:-len(SUFFIX)].isdigit()]
    return sorted(files, key=lambda p: int(p.name[len(prefix.name) + 1:-len(SUFFIX)]))


@dataclass
class _Entry:
    sink: LogSink
    kind: str  # predict, classify, regress, multi_inference
    name: str
    version: int
    signature: str
    tags: tuple[str, ...]
    timestamp: float
    payload: tuple  # predict: (inputs, outputs, output_filter); others: (request, response)


class _File:
    """The file a sink appends to now, and its size."""

    def __init__(self, prefix: Path):
        prefix.parent.mkdir(parents=True, exist_ok=True)
        self.path = prefix.parent / f"{prefix.name}.{time.time_ns()}{SUFFIX}"
        self.f = open(self.path, "ab")
        self.size = 0


class RequestLog:
    """The server's request logger: sinks per model (from the config in force), a bounded
    queue and one writer thread."""

    def __init__(self, registry, max_file_bytes: int, max_total_bytes: int,
                 queue_size: int, tags: tuple[str, ...] = ("serve",)):
        self.tags = tuple(tags)  # --saved_model_tags: every version loads with these
        self.max_file_bytes, self.max_total_bytes = max_file_bytes, max_total_bytes
        self._sinks: dict[str, LogSink] = {}
        self._files: dict[Path, _File] = {}
        self._queue: queue.Queue[_Entry | None] = queue.Queue(maxsize=queue_size)
        self.dropped = Counter(":tfdeploy:request_log:dropped_count",
                               "Sampled requests not logged: the writer's queue was full.",
                               ("model_name",), registry=registry)
        self.written = Counter(":tfdeploy:request_log:record_count",
                               "Requests written to request logs.", ("model_name",),
                               registry=registry)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def set_sinks(self, sinks: dict[str, LogSink]) -> None:
        """The sinks of the config now in force (hook: the server applies a config)."""
        self._sinks = dict(sinks)
        if sinks:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._write_loop, daemon=True,
                                                    name="request-log")
                    self._thread.start()

    # -- request path: sample and enqueue only --------------------------------------------
    def offer(self, kind: str, servable, signature: str, payload: tuple) -> None:
        """Log this request if its model logs and the sample says so; never blocks."""
        sink = self._sinks.get(servable.name)
        if sink is None or sink.sampling_rate <= 0.0 or (
                sink.sampling_rate < 1.0 and random.random() >= sink.sampling_rate):
            return
        entry = _Entry(sink, kind, servable.name, servable.version, signature,
                       self.tags, time.time(), payload)
        try:
            self._queue.put_nowait(entry)
        except queue.Full:
            self.dropped.labels(servable.name).inc()

    # -- writer thread ---------------------------------------------------------------------
    def _write_loop(self) -> None:
        while True:
            entry = self._queue.get()
            if entry is None:
                return
            try:
                self._write(entry)
            except Exception:  # a full disk must not end logging for good
                log.exception("request log: cannot write a record of %s", entry.name)

    def _write(self, entry: _Entry) -> None:
        data = tfrecord.frame(record(entry).SerializeToString())
        current = self._files.get(entry.sink.prefix)
        if current is not None and current.size and \
                current.size + len(data) > self.max_file_bytes:
            current.f.close()
            current = None
        if current is None:
            current = self._files[entry.sink.prefix] = _File(entry.sink.prefix)
        current.f.write(data)
        current.f.flush()  # a reader sees whole records (a cut one ends its read)
        current.size += len(data)
        self.written.labels(entry.name).inc()
        self._enforce_cap(entry.sink.prefix, current.path)

    def _enforce_cap(self, prefix: Path, keep: Path) -> None:
        """Remove the oldest files of ``prefix`` until its files fit the cap (the one
        being written stays)."""
        files = log_files(prefix)
        sizes = {p: p.stat().st_size for p in files}
        total = sum(sizes.values())
        for p in files:
            if total <= self.max_total_bytes or p == keep:
                break
            p.unlink(missing_ok=True)
            total -= sizes[p]

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until the queued records are written (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self) -> None:
        if self._thread is not None:
            try:
                self._queue.put(None, timeout=5)
            except queue.Full:
                pass
            self._thread.join(5)
        for current in self._files.values():
            current.f.close()


def record(entry: _Entry):
    """The PredictionLog of one logged request (built on the writer thread)."""
    log_pb2 = protos.module("tensorflow_serving.apis.prediction_log_pb2")
    out = log_pb2.PredictionLog()
    meta = out.log_metadata
    meta.model_spec.name = entry.name
    meta.model_spec.version.value = entry.version
    meta.model_spec.signature_name = entry.signature
    meta.sampling_config.CopyFrom(entry.sink.sampling_config)
    meta.saved_model_tags.extend(entry.tags)
    meta.timestamp_secs = int(entry.timestamp)
    if entry.kind == "predict":
        inputs, outputs, output_filter = entry.payload
        request = out.predict_log.request
        request.model_spec.CopyFrom(meta.model_spec)
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(tensors.to_proto(value))
        request.output_filter.extend(output_filter)
        response = out.predict_log.response
        response.model_spec.CopyFrom(meta.model_spec)
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(tensors.to_proto(value))
    else:
        request, response = entry.payload
        target = getattr(out, f"{entry.kind}_log")
        target.request.CopyFrom(request)
        target.response.CopyFrom(response)
    return out
