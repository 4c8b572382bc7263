"""Loader and Servable: one SavedModel version, loaded, validated against and run.

The Loader knows how to load a version (and replay its warmup requests); the Servable is
what the Manager hands to requests.  Requests are checked against the SignatureDef read
from the SavedModel proto, so a bad request gets a message naming the input at fault
instead of a TF stack trace.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfdeploy.tfs import tensors
from tfdeploy.tfs.codes import Code, StatusError, tf_error_message
from tfdeploy.tfs.names import DEFAULT_SIGNATURE, SERVE_TAG
from tfdeploy.tfs.saved_model import read_saved_model, serving_signature_defs, shape_text
from tfdeploy.tfs.versions import WARMUP_FILE

log = logging.getLogger("tfdeploy.serving")

MAX_WARMUP_RECORDS = 1000


@dataclass
class Servable:
    name: str
    version: int
    path: Path
    signature_defs: dict  # key -> SignatureDef proto
    functions: dict  # key -> concrete function
    keepalive: object = None  # the loaded object the functions belong to
    batchers: dict = field(default_factory=dict)

    def signature(self, key: str):
        key = key or DEFAULT_SIGNATURE
        if key not in self.signature_defs:
            raise StatusError(Code.INVALID_ARGUMENT,
                               f'Serving signature key "{key}" not found. Available: '
                               f"{', '.join(sorted(self.signature_defs))}")
        return key, self.signature_defs[key]

    def check_inputs(self, key: str, inputs: dict[str, np.ndarray]) -> None:
        _, sd = self.signature(key)
        expected, got = set(sd.inputs), set(inputs)
        if expected != got:
            extra, missing = sorted(got - expected), sorted(expected - got)
            raise StatusError(
                Code.INVALID_ARGUMENT,
                f"input size does not match signature {key!r}: {len(got)}!={len(expected)}. "
                f"Sent extra: {extra}. Missing but required: {missing}.")
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
            if info.tensor_shape.unknown_rank:
                continue
            dims = [d.size for d in info.tensor_shape.dim]
            if len(dims) != array.ndim or any(
                    d >= 0 and d != s for d, s in zip(dims, array.shape, strict=True)):
                spec = shape_text([d if d >= 0 else None for d in dims])
                raise StatusError(
                    Code.INVALID_ARGUMENT,
                    f"input {name!r} expects shape {spec}, got {list(array.shape)}")

    def run(self, key: str, inputs: dict[str, np.ndarray],
            output_filter: list[str] | tuple = ()) -> dict[str, np.ndarray]:
        """Validate, then run (through the batcher when batching is on)."""
        key, sd = self.signature(key)
        unknown = [o for o in output_filter if o not in sd.outputs]
        if unknown:
            raise StatusError(Code.INVALID_ARGUMENT,
                               f"output tensor alias {unknown[0]!r} not found in signature "
                               f"{key!r} (outputs: {', '.join(sorted(sd.outputs))})")
        self.check_inputs(key, inputs)
        batcher = self.batchers.get(key)
        outputs = batcher.submit(inputs) if batcher else self.call(key, inputs)
        if output_filter:
            outputs = {k: outputs[k] for k in output_filter}
        return outputs

    def close(self) -> None:
        """On unload: batch threads finish what is queued, then end; later calls (requests
        that still hold this servable) run unbatched."""
        for batcher in self.batchers.values():
            batcher.close()

    def call(self, key: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the signature function on already-validated inputs."""
        fn = self.functions[key]
        try:
            result = fn(**{k: tf.constant(v) for k, v in inputs.items()})
        except tf.errors.InvalidArgumentError as exc:
            raise StatusError(Code.INVALID_ARGUMENT, tf_error_message(exc)) from None
        except (tf.errors.OpError, TypeError, ValueError) as exc:
            raise StatusError(Code.INTERNAL, tf_error_message(exc)) from None
        return {k: v.numpy() for k, v in result.items()}


class Loader:
    """Knows how to load one version; loading is only done when the Manager says so."""

    def __init__(self, name: str, version: int, path: Path, warmup: bool = True,
                 batching=None, metrics=None):
        self.name, self.version, self.path = name, version, path
        self.warmup = warmup
        self.batching = batching
        self.metrics = metrics

    def load(self) -> Servable:
        _, proto = read_saved_model(self.path)
        defs = serving_signature_defs(proto, SERVE_TAG)
        if defs is None:
            raise StatusError(Code.FAILED_PRECONDITION,
                              f"{self.path}: no meta graph tagged {SERVE_TAG!r}")
        loaded = tf.saved_model.load(str(self.path), tags=[SERVE_TAG])
        functions = {k: loaded.signatures[k] for k in defs if k in loaded.signatures}
        servable = Servable(self.name, self.version, self.path,
                            {k: defs[k] for k in functions}, functions, keepalive=loaded)
        if self.batching is not None:
            from tfdeploy.serving.batching import make_batchers

            servable.batchers = make_batchers(servable, self.batching, self.metrics)
        if self.warmup:
            self._replay_warmup(servable)
        return servable

    def _replay_warmup(self, servable: Servable) -> None:
        """Run the recorded requests so tracing and allocation happen before traffic."""
        path = self.path / WARMUP_FILE
        if not path.is_file():
            return
        from tfdeploy.tfs import protos

        log_pb2 = protos.module("tensorflow_serving.apis.prediction_log_pb2")
        count = 0
        for record in tf.data.TFRecordDataset(str(path)).take(MAX_WARMUP_RECORDS):
            entry = log_pb2.PredictionLog.FromString(record.numpy())
            if entry.WhichOneof("log_type") != "predict_log":
                continue
            request = entry.predict_log.request
            inputs = {k: tensors.from_proto(v) for k, v in request.inputs.items()}
            servable.call(*servable.signature(request.model_spec.signature_name)[:1], inputs)
            count += 1
        log.info("replayed %d warmup request(s) for %s version %d", count, self.name,
                 self.version)
