"""Server-side batching (``--enable_batching``).

Concurrent Predict calls on the same servable and signature are concatenated along the
batch dimension, run once, and split back, so N clients sending one image each cost about
one batched call.  Only signatures whose every input has an unknown leading dimension can
be merged (``serving_default`` can, the seed's ``predict_images`` with its fixed [1, ...]
cannot), and only requests whose other dimensions and dtypes agree.  If a merged call
fails (say, images of different sizes in one ``serving_default`` batch), each request is
re-run alone so one caller's input never decides another's result.

The BatchingParameters fields act as in tensorflow_model_server: ``allowed_batch_sizes``
pads each executed batch up to the next allowed size (repeating the first row of the last
request) and slices the padding off the outputs; ``pad_variable_length_inputs`` lets
requests whose inputs differ in non-batch dimensions merge, each input padded at the end
of every dimension to the largest size in the batch with its own first element;
``enable_large_batch_splitting`` splits a request larger than ``max_execution_batch_size``
(default ``max_batch_size``) into pieces that run in batches of at most that size, their
outputs joined again.  Parameters tensorflow_model_server refuses are refused at start-up
with its message.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from tfdeploy.tfs.codes import INTERNAL_MESSAGE, Code, StatusError
from tfdeploy.tfs.flags import schedulable_cpus

log = logging.getLogger("tfdeploy.serving.batching")


@dataclass
class BatchOptions:
    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    #: Unset in BatchingParameters, tensorflow_model_server's batch scheduler takes
    #: TensorFlow's MaxParallelism(): the CPUs the process may run on (its affinity), not
    #: the machine's cores, so a container limited by a cpuset gets that many threads.
    num_batch_threads: int = field(default_factory=schedulable_cpus)
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False
    enable_large_batch_splitting: bool = False
    max_execution_batch_size: int = 0  # with splitting; 0: max_batch_size

    @classmethod
    def from_proto(cls, params) -> BatchOptions:
        """The options of a BatchingParameters message, checked as tensorflow_model_server
        checks them (StatusError INVALID_ARGUMENT with its message otherwise)."""
        out = cls()
        if params is None:
            return out
        for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches",
                     "num_batch_threads", "max_execution_batch_size"):
            if params.HasField(name):
                setattr(out, name, int(getattr(params, name).value))
        out.allowed_batch_sizes = tuple(int(v) for v in params.allowed_batch_sizes)
        out.pad_variable_length_inputs = bool(params.pad_variable_length_inputs)
        out.enable_large_batch_splitting = (params.HasField("enable_large_batch_splitting")
                                            and params.enable_large_batch_splitting.value)
        out.validate()
        return out

    @property
    def execution_limit(self) -> int:
        """The most rows one executed batch has (before padding to an allowed size)."""
        if self.enable_large_batch_splitting:
            return self.max_execution_batch_size or self.max_batch_size
        return self.max_batch_size

    def validate(self) -> None:
        def invalid(message: str) -> StatusError:
            return StatusError(Code.INVALID_ARGUMENT, message)

        if self.num_batch_threads < 1:
            raise invalid(f"num_batch_threads must be positive; was {self.num_batch_threads}")
        if self.max_batch_size <= 0:
            raise invalid(f"input_batch_size_limit must be positive; was "
                          f"{self.max_batch_size}")
        if self.batch_timeout_micros < 0:
            raise invalid(f"batch_timeout_micros must be non-negative; was "
                          f"{self.batch_timeout_micros}")
        if self.max_enqueued_batches == 0 and not self.enable_large_batch_splitting:
            self.max_enqueued_batches = 1  # tensorflow_model_server rewrites it so, too
        if self.max_enqueued_batches <= 0:
            raise invalid(f"max_enqueued_batches must be positive; was "
                          f"{self.max_enqueued_batches}")
        if self.allowed_batch_sizes and self.allowed_batch_sizes[-1] != self.max_batch_size:
            raise invalid("Last entry in allowed_batch_sizes must match max_batch_size; last "
                          f"entry was {self.allowed_batch_sizes[-1]}; expected "
                          f"{self.max_batch_size}")
        if self.enable_large_batch_splitting:
            if self.execution_limit <= 0:
                raise invalid(f"max_execution_batch_size must be positive; was "
                              f"{self.execution_limit}")
            if self.execution_limit > self.max_batch_size:
                # TF Serving's text, the three values it appends included (true is "1")
                raise invalid("When enable_large_batch_splitting is true, "
                              "input_batch_size_limit must be greater than or equal to "
                              f"max_execution_batch_size.1{self.max_batch_size}"
                              f"{self.execution_limit}")

    def padded_size(self, size: int) -> int:
        """The batch size ``size`` rows run as: the first allowed size that holds them
        (``size`` itself without allowed sizes, or when none is large enough)."""
        return next((a for a in self.allowed_batch_sizes if a >= size), size)


@dataclass(eq=False)  # identity: queue.remove() must not compare the numpy inputs
class _Task:
    inputs: dict[str, np.ndarray]
    size: int
    key: tuple
    deadline: float | None = None
    done: threading.Event = field(default_factory=threading.Event)
    result: dict[str, np.ndarray] | None = None
    error: StatusError | None = None


def pad_to(array: np.ndarray, dims: Sequence[int]) -> np.ndarray:
    """``array`` padded at the end of each non-batch dimension to ``dims`` (one size per
    non-batch dimension) with its own first element, as tensorflow_model_server pads
    variable-length inputs."""
    widths = [(0, 0)] + [(0, d - s) for s, d in zip(array.shape[1:], dims, strict=True)]
    if not any(after for _, after in widths):
        return array
    value = array.flat[0] if array.size else array.dtype.type()
    return np.pad(array, widths, mode="constant", constant_values=value)


def merge_inputs(requests: Sequence[Mapping[str, np.ndarray]], padding: int = 0,
                 pad_variable_length: bool = False) -> dict[str, np.ndarray]:
    """One input dict: each input of ``requests`` concatenated along the batch dimension, in
    order (all requests have the same input names and dtypes; the same non-batch
    dimensions unless ``pad_variable_length``, which pads each to the largest).
    ``padding`` more rows follow, copies of the last request's first row."""
    merged = {}
    for k in requests[0]:
        parts = [r[k] for r in requests]
        if pad_variable_length:
            dims = np.max([p.shape[1:] for p in parts], axis=0) if parts[0].ndim > 1 else []
            parts = [pad_to(p, [int(d) for d in dims]) for p in parts]
        if padding:
            parts.append(np.repeat(parts[-1][:1], padding, axis=0))
        merged[k] = np.concatenate(parts) if len(parts) > 1 else parts[0]
    return merged


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


def join_outputs(parts: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The outputs of a request's pieces (large-batch splitting) joined along the batch
    dimension, in order."""
    for k, v in parts[0].items():
        if v.ndim == 0:
            raise StatusError(Code.FAILED_PRECONDITION,
                              f"Batched output tensor {k} has 0 dimensions")
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


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

    def _key(self, inputs: Mapping[str, np.ndarray]) -> tuple:
        """What requests must share to merge: input names and dtypes, and the non-batch
        dimensions (only their number with pad_variable_length_inputs)."""
        if self.options.pad_variable_length_inputs:
            return tuple(sorted((k, v.dtype.str, v.ndim) for k, v in inputs.items()))
        return tuple(sorted((k, v.dtype.str, v.shape[1:]) for k, v in inputs.items()))

    def _pieces(self, size: int, key: tuple) -> list[tuple[int, int]]:
        """The row ranges a request of ``size`` rows is queued as (called under the lock).
        Whole, unless large-batch splitting is on and it does not fit the open batch
        (what is queued with its key past the last full execution batch): then, as
        tensorflow_model_server splits, a first piece fills the open batch and the rest
        goes in pieces of max_execution_batch_size."""
        step = self.options.execution_limit
        if not self.options.enable_large_batch_splitting:
            return [(0, size)]
        queued = sum(t.size for t in self._queue if t.key == key) % step
        room = step - queued
        if size <= room:
            return [(0, size)]
        bounds = [0, room] if queued else [0]
        while bounds[-1] + step < size:
            bounds.append(bounds[-1] + step)
        bounds.append(size)
        return list(zip(bounds, bounds[1:], strict=False))

    def submit(self, inputs: dict[str, np.ndarray],
               deadline: float | None = None) -> dict[str, np.ndarray]:
        """Queue the request for a batch and wait for its result, until ``deadline``
        (time.monotonic()) at most: DEADLINE_EXCEEDED then, and its pieces not taken yet
        are dropped unrun (taken ones past their deadline are skipped too)."""
        size = next(iter(inputs.values())).shape[0] if inputs else 0
        if size > self.options.max_batch_size:  # as tensorflow_model_server's queue
            raise StatusError(Code.INVALID_ARGUMENT,
                              f"Task size {size} is larger than maximum input batch size "
                              f"{self.options.max_batch_size}")
        if size == 0:
            return self.servable.call(self.signature, inputs)
        key = self._key(inputs)
        with self._cond:
            # checked under the lock: a task queued after the threads left would wait forever
            closed = self._closed
            if not closed:
                limit = self.options.max_enqueued_batches * self.options.max_batch_size
                if sum(t.size for t in self._queue) + size > limit:
                    raise StatusError(Code.UNAVAILABLE, "batch queue is full; retry later")
                tasks = [_Task({k: v[start:stop] for k, v in inputs.items()}, stop - start,
                               key, deadline) for start, stop in self._pieces(size, key)]
                self._queue.extend(tasks)
                self._cond.notify(len(tasks))
        if closed:  # the servable was unloaded while this request held it: run it alone
            return self.servable.call(self.signature, inputs)
        for task in tasks:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not task.done.wait(timeout):
                with self._cond:
                    for t in tasks:  # not taken yet: they never run
                        if t in self._queue:
                            self._queue.remove(t)
                raise StatusError(Code.DEADLINE_EXCEEDED, "Deadline Exceeded")
        for task in tasks:
            if task.error is not None:
                raise task.error
        if len(tasks) == 1:
            return tasks[0].result
        return join_outputs([t.result for t in tasks])

    def _take(self) -> list[_Task] | None:
        timeout = self.options.batch_timeout_micros / 1e6
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait(0.5)
            first = self._queue[0]
            deadline = time.monotonic() + timeout
            limit = self.options.execution_limit

            def gather() -> list[_Task]:
                picked, total = [], 0
                for t in self._queue:
                    if t.key == first.key and total + t.size <= limit:
                        picked.append(t)
                        total += t.size
                return picked

            picked = gather()
            while (sum(t.size for t in picked) < limit
                   and (remaining := deadline - time.monotonic()) > 0):
                self._cond.wait(remaining)
                picked = gather()
            for t in picked:
                self._queue.remove(t)
            now = time.monotonic()
            expired = [t for t in picked if t.deadline is not None and t.deadline <= now]
            for t in expired:  # their callers already answered DEADLINE_EXCEEDED
                t.error = StatusError(Code.DEADLINE_EXCEEDED, "Deadline Exceeded")
                t.done.set()
            return [t for t in picked if t not in expired]

    def _loop(self) -> None:
        while (tasks := self._take()) is not None:
            try:
                self._run(tasks)
            except Exception:  # never leave a caller waiting
                log.exception("batch failed")
                for t in tasks:
                    if not t.done.is_set():
                        t.error = StatusError(Code.INTERNAL, INTERNAL_MESSAGE)
                        t.done.set()

    def _run(self, tasks: list[_Task]) -> None:
        if not tasks:
            return
        sizes = [t.size for t in tasks]
        padded = self.options.padded_size(sum(sizes))
        padding = padded - sum(sizes)
        if self.metrics is not None:  # the size that runs, padding included (as TF Serving)
            self.metrics.observe_batch(self.servable, self.signature, padded, len(tasks))
        if len(tasks) > 1 or padding:
            merged = merge_inputs([t.inputs for t in tasks], padding,
                                  self.options.pad_variable_length_inputs)
            try:
                outputs = self.servable.call(self.signature, merged)
                parts = split_outputs(outputs, sizes + [padding] if padding else sizes)
                if parts is not None:
                    for t, part in zip(tasks, parts[:len(tasks)], strict=True):
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
