"""Servable: one loaded version, as the request path sees it; and SavedModelLoader.

``Servable`` is what every platform's servable is (``tflite.TfliteServable`` too): its
SignatureDefs, the request checks, ``run`` (checks, then batcher or ``call``), ``call`` and
``close``.  Its own ``call`` runs a TF session, the SavedModel platform's; other platforms
override ``call``/``run_tensors``.  Each platform has its loader (``SavedModelLoader``
here, ``tflite.TfliteLoader``); ``loader.Loader`` picks one and replays warmup.  This
module imports neither of the others, so there is no import circle.

A version is loaded as tensorflow_model_server loads it: the MetaGraph whose tags are
``--saved_model_tags`` (default "serve") is imported into a graph of its own with a
session, its variables restored and its init ops run; a request is fed to the graph by the
tensor names of its SignatureDef and the signature's output tensors are fetched.  So the
graph, not a declared shape, decides what it accepts (x of shape [3] for a [?, 1]
signature runs wherever the graph's ops allow it), and TF1 MetaGraphs (``.pb`` or
``.pbtxt``, ParseExample inputs, tables) serve as well as TF2 and Keras exports.  Feeds
and fetches go through session callables (made once per signature and output set), the
fast path of a TF session.

Before the graph runs, a request is checked for what the official server checks: the
signature exists, the input names match, each input's dtype is the signature's.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import tensorflow as tf

from tfdeploy.serving import memory
from tfdeploy.serving.path import timeout_bucket
from tfdeploy.tfimport import onednn_enabled
from tfdeploy.tfs import onednn, tensors
from tfdeploy.tfs.codes import Code, StatusError, tf_error_message
from tfdeploy.tfs.names import DEFAULT_SIGNATURE, SERVE_TAG
from tfdeploy.tfs.saved_model import meta_graph, read_saved_model, signature_defs


@dataclass
class Servable:
    name: str
    version: int
    path: Path
    signature_defs: dict  # key -> SignatureDef proto
    session: object = None  # the tf.compat.v1.Session holding the version's graph
    batchers: dict = field(default_factory=dict)
    _callables: dict = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def signature(self, key: str):
        key = key or DEFAULT_SIGNATURE
        if key not in self.signature_defs:
            raise StatusError(Code.FAILED_PRECONDITION,
                              f'Serving signature key "{key}" not found.')
        return key, self.signature_defs[key]

    def check_inputs(self, key: str, inputs: dict[str, np.ndarray]) -> None:
        _, sd = self.signature(key)
        expected, got = set(sd.inputs), set(inputs)
        if expected != got:
            extra, missing = sorted(got - expected), sorted(expected - got)
            raise StatusError(
                Code.INVALID_ARGUMENT,
                f"input size does not match signature: {len(got)}!={len(expected)} "
                f"len({{{','.join(sorted(got))}}}) != len({{{','.join(sorted(expected))}}}). "
                f"Sent extra: {{{','.join(extra)}}}. "
                f"Missing but required: {{{','.join(missing)}}}.")
        for name, array in inputs.items():
            info = sd.inputs[name]
            want = tensors.numpy_dtype(info.dtype)
            if (want.kind == "O") != (array.dtype.kind == "O") or (
                    want.kind != "O" and array.dtype != want):
                have = "string" if array.dtype.kind == "O" else str(array.dtype)
                raise StatusError(
                    Code.INVALID_ARGUMENT,
                    f"input {name!r} expects dtype {tensors.dtype_name(info.dtype)}, "
                    f"got {have}")

    def run(self, key: str, inputs: dict[str, np.ndarray],
            output_filter: list[str] | tuple = (), timeout_ms: int = 0,
            deadline: float | None = None) -> dict[str, np.ndarray]:
        """Check, then run (through the batcher when batching is on).  ``timeout_ms`` > 0
        bounds the graph run (DEADLINE_EXCEEDED after it), as the session run timeout
        of the request's deadline; a batched request waits for its batch until
        ``deadline`` (time.monotonic()) at most and is not run once it passed."""
        key, sd = self.signature(key)
        seen = set()
        for alias in output_filter:
            if alias not in sd.outputs:
                raise StatusError(
                    Code.INVALID_ARGUMENT,
                    f"output tensor alias not found in signature: {alias} Outputs expected "
                    f"to be in the set {{{','.join(sorted(sd.outputs))}}}.")
            if alias in seen:
                raise StatusError(Code.INVALID_ARGUMENT,
                                  f"duplicate output tensor alias: {alias}")
            seen.add(alias)
        self.check_inputs(key, inputs)
        batcher = self.batchers.get(key)
        if batcher is not None:
            outputs = batcher.submit(inputs, deadline)
            return {k: outputs[k] for k in output_filter} if output_filter else outputs
        return self.call(key, inputs, tuple(output_filter), timeout_ms)

    def close(self) -> None:
        """On unload: batch threads finish what is queued, then end; later calls (requests
        that still hold this servable) run unbatched on the session, which stays open
        until the last of them drops the servable."""
        for batcher in self.batchers.values():
            batcher.close()

    def _callable(self, feeds: tuple[str, ...], fetches: tuple[str, ...], timeout_ms: int):
        """A session callable feeding and fetching these tensor names (made once, then
        reused: callables skip per-call graph pruning)."""
        timeout_ms = timeout_bucket(timeout_ms)
        cache_key = (feeds, fetches, timeout_ms)
        fn = self._callables.get(cache_key)
        if fn is None:
            from tensorflow.core.protobuf import config_pb2

            options = config_pb2.CallableOptions(feed=feeds, fetch=fetches)
            if timeout_ms > 0:
                options.run_options.timeout_in_ms = timeout_ms
            with self._lock:
                fn = self._callables.get(cache_key)
                if fn is None:
                    # the callable API, unlike Session.run, does not hold fed values to
                    # the tensors' static shapes: the graph decides, as in TF Serving
                    fn = self.session._make_callable_from_options(options)
                    self._callables[cache_key] = fn
        return fn

    def run_tensors(self, feeds: dict[str, np.ndarray], fetches: tuple[str, ...],
                    timeout_ms: int = 0) -> list[np.ndarray]:
        """Run the graph: ``feeds`` by tensor name, the ``fetches`` tensors' values back."""
        names = tuple(sorted(feeds))
        fn = self._callable(names, tuple(fetches), timeout_ms)
        try:
            with memory.running():    # the last run in flight gives free memory back
                return fn(*(feeds[n] for n in names))
        except tf.errors.OpError as exc:
            raise StatusError(Code.from_number(exc.error_code),
                              tf_error_message(exc)) from None
        except (TypeError, ValueError) as exc:
            raise StatusError(Code.INVALID_ARGUMENT, tf_error_message(exc)) from None

    def call(self, key: str, inputs: dict[str, np.ndarray], outputs: tuple[str, ...] = (),
             timeout_ms: int = 0) -> dict[str, np.ndarray]:
        """Run the signature on already-checked inputs; all outputs unless ``outputs``."""
        sd = self.signature_defs[key]
        outputs = outputs or tuple(sorted(sd.outputs))
        values = self.run_tensors({sd.inputs[k].name: v for k, v in inputs.items()},
                                  tuple(sd.outputs[k].name for k in outputs), timeout_ms)
        return dict(zip(outputs, values, strict=True))

    def __del__(self) -> None:
        session = self.session
        if session is not None:
            try:
                session.close()
            except Exception:  # interpreter shutdown: nothing left to free
                pass


class PlatformLoader(Protocol):
    """What each platform's loader is (``SavedModelLoader``, ``tflite.TfliteLoader``):
    made for one version, asked once to ``load()`` it, on a loader thread; what it
    returns is a ``Servable``, whatever the platform, so the request path has one type."""

    name: str
    version: int
    path: Path

    def load(self) -> Servable: ...


def session_threads(session: int, intra: int, inter: int) -> tuple[int, int]:
    """A version session's (intra-op, inter-op) threads from tensorflow_model_server's
    three flags, as it reads them: intra and inter when either is set, else
    ``--tensorflow_session_parallelism`` for both (0: TensorFlow's choice); all three
    set is INVALID_ARGUMENT, with its message."""
    if intra > 0 and inter > 0 and session > 0:
        raise StatusError(
            Code.INVALID_ARGUMENT,
            "Either configure server_options.tensorflow_session_parallelism or "
            "(server_options.tensorflow_intra_op_parallelism, "
            "server_options.tensorflow_inter_op_parallelism) separately. "
            "You cannot configure all.")
    if intra > 0 or inter > 0:
        return intra, inter
    return session, session


class SavedModelLoader:
    """Loads one SavedModel version (the "tensorflow" platform): its MetaGraph into a
    graph and session of their own.  Platform choice and warmup are ``loader.Loader``'s."""

    def __init__(self, name: str, version: int, path: Path,
                 tags: tuple[str, ...] = (SERVE_TAG,), threads: tuple[int, int] = (0, 0)):
        """``threads``: the session's (intra-op, inter-op) parallelism, 0 = TensorFlow's
        choice (``session_threads``)."""
        self.name, self.version, self.path = name, version, path
        self.tags = tuple(tags)
        self.threads = threads

    def load(self) -> Servable:
        _, proto = read_saved_model(self.path)
        mg = meta_graph(proto, self.tags)
        if mg is None:
            raise StatusError(Code.NOT_FOUND,
                              "Could not find meta graph def matching supplied tags: { "
                              f"{' '.join(self.tags)} }}. To inspect available tag-sets in "
                              "the SavedModel, please use the SavedModel CLI: "
                              "`saved_model_cli`")
        if not onednn_enabled() and (ops := onednn.needs_onednn(onednn.graph_ops(mg))):
            # TensorFlow would load it and fail every run ("Missing 0-th output"): refuse
            # the version instead, so the versions that serve keep serving
            raise StatusError(
                Code.FAILED_PRECONDITION,
                f"{self.name} version {self.version} runs on TensorFlow's oneDNN kernels "
                f"({', '.join(ops)}), which are off in this server: {onednn.HOW_TO_TURN_ON}")
        graph = tf.Graph()
        # Threads of its own per version: a long request on one version (or many) must not
        # starve the restore ops of a version loading beside it.
        session = tf.compat.v1.Session(graph=graph, config=tf.compat.v1.ConfigProto(
            allow_soft_placement=True, use_per_session_threads=True,
            intra_op_parallelism_threads=self.threads[0],
            inter_op_parallelism_threads=self.threads[1]))
        try:
            with graph.as_default():
                tf.compat.v1.saved_model.loader.load(session, list(self.tags), str(self.path))
        except Exception:
            session.close()
            raise
        return Servable(self.name, self.version, self.path, signature_defs(mg), session)
