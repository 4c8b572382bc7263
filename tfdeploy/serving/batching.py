"""Server-side batching (``--enable_batching``).

Concurrent Predict calls on the same servable and signature are concatenated along the
batch dimension, run once, and split back, so N clients sending one image each cost about
one batched call.  Only signatures whose every input has an unknown leading dimension can
be merged (``serving_default`` can, the seed's ``predict_images`` with its fixed [1, ...]
cannot), and only requests whose other dimensions and dtypes agree.  If a merged call
fails (say, images of different sizes in one ``serving_default`` batch), each request is
re-run alone so one caller's input never decides another's result.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from tfdeploy.tfs.codes import Code, StatusError

log = logging.getLogger("tfdeploy.serving.batching")


@dataclass
class BatchOptions:
    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = field(default_factory=lambda: os.cpu_count() or 4)

    @classmethod
    def from_proto(cls, params) -> BatchOptions:
        out = cls()
        for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches",
                     "num_batch_threads"):
            if params is not None and params.HasField(name):
                setattr(out, name, int(getattr(params, name).value))
        return out


@dataclass(eq=False)  # identity: queue.remove() must not compare the numpy inputs
class _Task:
    inputs: dict[str, np.ndarray]
    size: int
    key: tuple
    done: threading.Event = field(default_factory=threading.Event)
    result: dict[str, np.ndarray] | None = None
    error: StatusError | None = None


def merge_inputs(requests: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One input dict: each input of ``requests`` concatenated along the batch dimension, in
    order (all requests have the same input names, dtypes and non-batch dimensions)."""
    return {k: np.concatenate([r[k] for r in requests]) for k in requests[0]}


def split_outputs(outputs: Mapping[str, np.ndarray],
                  sizes: Sequence[int]) -> list[dict[str, np.ndarray]] | None:
    """The outputs of a merged call sliced back into one dict per request (``sizes``: each
    request's rows, in merge order), or None when some output has no batch dimension of
    ``sum(sizes)`` rows and so cannot be split."""
    total = sum(sizes)
    if not all(v.ndim and v.shape[0] == total for v in outputs.values()):
        return None
    parts, start = [], 0
    for size in sizes:
        parts.append({k: v[start:start + size] for k, v in outputs.items()})
        start += size
    return parts


def batchable(signature_def) -> bool:
    for info in signature_def.inputs.values():
        shape = info.tensor_shape
        if shape.unknown_rank or not shape.dim or shape.dim[0].size != -1:
            return False
    return True


class Batcher:
    """One queue and its batch threads, for one signature of one servable."""

    def __init__(self, servable, signature: str, options: BatchOptions, metrics=None):
        self.servable, self.signature, self.options = servable, signature, options
        self.metrics = metrics
        self._queue: list[_Task] = []
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._loop, daemon=True,
                             name=f"batch-{servable.name}-{servable.version}-{signature}-{i}")
            for i in range(max(1, options.num_batch_threads))
        ]
        for t in self._threads:
            t.start()

    def submit(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        size = next(iter(inputs.values())).shape[0] if inputs else 0
        if size == 0 or size > self.options.max_batch_size:
            return self.servable.call(self.signature, inputs)
        key = tuple(sorted((k, v.dtype.str, v.shape[1:]) for k, v in inputs.items()))
        task = _Task(inputs, size, key)
        with self._cond:
            # checked under the lock: a task queued after the threads left would wait forever
            closed = self._closed
            if not closed:
                limit = self.options.max_enqueued_batches * self.options.max_batch_size
                if sum(t.size for t in self._queue) + size > limit:
                    raise StatusError(Code.UNAVAILABLE, "batch queue is full; retry later")
                self._queue.append(task)
                self._cond.notify()
        if closed:  # the servable was unloaded while this request held it: run it alone
            return self.servable.call(self.signature, inputs)
        task.done.wait()
        if task.error is not None:
            raise task.error
        return task.result

    def _take(self) -> list[_Task] | None:
        timeout = self.options.batch_timeout_micros / 1e6
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait(0.5)
            first = self._queue[0]
            deadline = time.monotonic() + timeout

            def gather() -> list[_Task]:
                picked, total = [], 0
                for t in self._queue:
                    if t.key == first.key and total + t.size <= self.options.max_batch_size:
                        picked.append(t)
                        total += t.size
                return picked

            picked = gather()
            while (sum(t.size for t in picked) < self.options.max_batch_size
                   and (remaining := deadline - time.monotonic()) > 0):
                self._cond.wait(remaining)
                picked = gather()
            for t in picked:
                self._queue.remove(t)
            return picked

    def _loop(self) -> None:
        while (tasks := self._take()) is not None:
            try:
                self._run(tasks)
            except Exception as exc:  # never leave a caller waiting
                for t in tasks:
                    if not t.done.is_set():
                        t.error = StatusError(Code.INTERNAL, f"batch failed: {exc}")
                        t.done.set()

    def _run(self, tasks: list[_Task]) -> None:
        if self.metrics is not None:
            self.metrics.observe_batch(self.servable, self.signature,
                                       sum(t.size for t in tasks), len(tasks))
        if len(tasks) > 1:
            merged = merge_inputs([t.inputs for t in tasks])
            try:
                outputs = self.servable.call(self.signature, merged)
                parts = split_outputs(outputs, [t.size for t in tasks])
                if parts is not None:
                    for t, part in zip(tasks, parts, strict=True):
                        t.result = part
                        t.done.set()
                    return
            except StatusError as exc:
                log.debug("merged batch of %d failed (%s); running alone", len(tasks), exc)
        for t in tasks:
            try:
                t.result = self.servable.call(self.signature, t.inputs)
            except StatusError as exc:
                t.error = exc
            t.done.set()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


def make_batchers(servable, params, metrics=None) -> dict[str, Batcher]:
    options = BatchOptions.from_proto(params)
    return {key: Batcher(servable, key, options, metrics)
            for key, sd in servable.signature_defs.items() if batchable(sd)}
