"""A version served from its ``model.tflite`` (``--prefer_tflite_model``), the way
tensorflow_model_server serves one.

The SavedModel beside the file, if any, plays no part: the signatures are the model's
own.  tensorflow_model_server takes them from the model's ``signature_defs_metadata``
entry (a flexbuffer map of signature key -> serialized SignatureDef, whose tensor names
may carry TF's ``:0`` suffix that TFLite tensor names lack); a model without that entry
gets one generated signature, ``serving_default``, whose inputs and outputs are the
model's input and output tensors keyed by their names without the suffix.  TFLite's own
signature runners are not consulted, so clients see the same keys on both servers.

A request feeds the interpreter's input tensors by name (resized when its shape differs,
as the official TFLite session does) and reads the output tensors the signature names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from tfdeploy.serving.servable import Servable
from tfdeploy.tfs.codes import Code, StatusError
from tfdeploy.tfs.names import DEFAULT_SIGNATURE
from tfdeploy.tfs.versions import TFLITE_FILE

SIGNATURE_DEFS_METADATA = b"signature_defs_metadata"
PREDICT_METHOD = "tensorflow/serving/predict"


def _legacy_name(tensor_name: str) -> str:
    """A TF tensor name as older TFLite converters named the tensor: without ``:N``."""
    return tensor_name.split(":", 1)[0]


def metadata_signature_defs(content: bytes) -> dict:
    """The SignatureDefs stored in the model's ``signature_defs_metadata``, or ``{}``."""
    from flatbuffers import flexbuffers
    from tensorflow.core.protobuf import meta_graph_pb2
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAs(content, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() != SIGNATURE_DEFS_METADATA:
            continue
        data = model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
        defs = {}
        table = flexbuffers.GetRoot(data).AsMap
        for key, value in zip(table.Keys, table.Values, strict=True):
            raw = value.AsStringBytes if value.IsString else value.AsBlob
            try:
                defs[key.AsKey] = meta_graph_pb2.SignatureDef.FromString(raw)
            except Exception as exc:  # protobuf's DecodeError, by any of its names
                raise StatusError(Code.INVALID_ARGUMENT,
                                  f"Invalid SignatureDefs found in TfLite model: {exc}") from None
        return defs
    return {}


def _tensor_info(detail: dict):
    from tensorflow.core.protobuf import meta_graph_pb2

    info = meta_graph_pb2.TensorInfo(name=detail["name"],
                                     dtype=tf.as_dtype(detail["dtype"]).as_datatype_enum)
    for size in detail["shape"]:
        info.tensor_shape.dim.add(size=int(size))
    return info


class TfliteServable(Servable):
    """Runs the signatures of one ``model.tflite`` on TensorFlow's TFLite interpreter."""

    interpreter: object = None
    input_index: dict[str, int]
    output_index: dict[str, int]

    @classmethod
    def load(cls, name: str, version: int, path: Path, filename: str) -> TfliteServable:
        content = (path / filename).read_bytes()
        interpreter = tf.lite.Interpreter(model_content=content)
        interpreter.allocate_tensors()
        inputs = {d["name"]: d for d in interpreter.get_input_details()}
        outputs = {d["name"]: d for d in interpreter.get_output_details()}
        defs = metadata_signature_defs(content)
        if defs:  # tensor names resolved to the model's, with or without ":N"
            for key, sd in defs.items():
                for kind, tensors in (("input", inputs), ("output", outputs)):
                    for alias, info in getattr(sd, f"{kind}s").items():
                        if info.name not in tensors:
                            info.name = _legacy_name(info.name)
                        if info.name not in tensors:
                            raise StatusError(
                                Code.INVALID_ARGUMENT,
                                f"Signature {kind} {alias} references an unknown tensor "
                                f"(signature {key})")
        else:
            from tensorflow.core.protobuf import meta_graph_pb2

            sd = meta_graph_pb2.SignatureDef(method_name=PREDICT_METHOD)
            for detail in inputs.values():
                sd.inputs[_legacy_name(detail["name"])].CopyFrom(_tensor_info(detail))
            for detail in outputs.values():
                sd.outputs[_legacy_name(detail["name"])].CopyFrom(_tensor_info(detail))
            defs = {DEFAULT_SIGNATURE: sd}
        servable = cls(name, version, path, defs)
        servable.interpreter = interpreter
        servable.input_index = {n: d["index"] for n, d in inputs.items()}
        servable.output_index = {n: d["index"] for n, d in outputs.items()}
        return servable

    def call(self, key: str, inputs: dict[str, np.ndarray], outputs: tuple[str, ...] = (),
             timeout_ms: int = 0) -> dict[str, np.ndarray]:
        sd = self.signature_defs[key]
        outputs = outputs or tuple(sorted(sd.outputs))
        interpreter = self.interpreter
        with self._lock:  # an interpreter runs one call at a time
            try:
                resized = False
                for alias, value in inputs.items():
                    index = self.input_index[sd.inputs[alias].name]
                    shape = list(np.shape(value))
                    if list(self._input_shape(index)) != shape:
                        interpreter.resize_tensor_input(index, shape, strict=False)
                        resized = True
                if resized:
                    interpreter.allocate_tensors()
                for alias, value in inputs.items():
                    interpreter.set_tensor(self.input_index[sd.inputs[alias].name], value)
                interpreter.invoke()
                return {alias: np.array(interpreter.get_tensor(
                    self.output_index[sd.outputs[alias].name])) for alias in outputs}
            except (ValueError, RuntimeError) as exc:
                raise StatusError(Code.INVALID_ARGUMENT, str(exc).splitlines()[0]) from None

    def _input_shape(self, index: int):
        for detail in self.interpreter.get_input_details():
            if detail["index"] == index:
                return detail["shape"]
        return ()

    def run_tensors(self, feeds: dict[str, np.ndarray], fetches: tuple[str, ...],
                    timeout_ms: int = 0) -> list[np.ndarray]:
        raise StatusError(Code.UNIMPLEMENTED, "Classify, Regress and MultiInference run on "
                          "TensorFlow graphs; this version serves its TFLite model "
                          "(Predict only)")


class TfliteLoader:
    """Loads one version's ``model.tflite`` (``--prefer_tflite_model``)."""

    def __init__(self, name: str, version: int, path: Path, filename: str = TFLITE_FILE):
        self.name, self.version, self.path, self.filename = name, version, path, filename

    def load(self) -> TfliteServable:
        return TfliteServable.load(self.name, self.version, self.path, self.filename)
