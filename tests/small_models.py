"""Small SavedModels built in the test session, for server tests that need a model that
loads in well under a second (the DeepLab exports take several).

All compute y = 0.5 * x + 2 ("half plus two", the shape of TF Serving's own test models),
with variables (so a truncated variables file really breaks loading):

- ``save_half_plus_two``: TF2 ``tf.saved_model.save``, x [?, 1] -> y;
- ``save_tf1_half_plus_two``: a TF1 graph saved with SavedModelBuilder (``.pb`` or
  ``.pbtxt``): serialized tf.Examples parsed by ParseExample, with a predict signature
  (x -> y), regress signatures (examples -> y, y2 = 0.5 x + 3) and a classify signature
  (examples -> scores y);
- ``save_keras_half_plus_two``: a Keras model exported with ``Model.export``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np


def save_half_plus_two(path: Path) -> Path:
    """A TF2 SavedModel at ``path``: ``serving_default`` maps x [?, 1] to y = x / 2 + 2."""
    import tensorflow as tf

    class HalfPlusTwo(tf.Module):
        def __init__(self):
            super().__init__()
            self.a = tf.Variable(0.5)
            self.b = tf.Variable(2.0)

        @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
        def serve(self, x):
            return {"y": self.a * x + self.b}

    module = HalfPlusTwo()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def save_tf1_half_plus_two(path: Path, as_text: bool = False) -> Path:
    """The TF1 model described above, saved by SavedModelBuilder."""
    import tensorflow as tf

    tf1 = tf.compat.v1
    sig = tf1.saved_model.signature_def_utils
    graph = tf.Graph()
    with graph.as_default(), tf1.Session(graph=graph) as session:
        a, b, c = (tf1.Variable(v, name=n) for v, n in ((0.5, "a"), (2.0, "b"), (3.0, "c")))
        examples = tf1.placeholder(tf.string, shape=[None], name="tf_example")
        features = tf1.io.parse_example(examples, {
            "x": tf1.io.FixedLenFeature([1], tf.float32),
            "x2": tf1.io.FixedLenFeature([1], tf.float32, default_value=[0.0])})
        x = tf.identity(features["x"], name="x")
        y = tf.identity(a * x + b, name="y")
        y2 = tf.identity(a * x + c, name="y2")
        signatures = {
            "serving_default": sig.predict_signature_def(inputs={"x": x}, outputs={"y": y}),
            "regress_x_to_y": sig.regression_signature_def(examples, y),
            "regress_x_to_y2": sig.regression_signature_def(examples, y2),
            "classify_x_to_y": sig.classification_signature_def(examples, None, y),
        }
        session.run(tf1.global_variables_initializer())
        builder = tf1.saved_model.Builder(str(path))
        builder.add_meta_graph_and_variables(session, ["serve"],
                                             signature_def_map=signatures)
        builder.save(as_text=as_text)
    return path


def save_keras_half_plus_two(path: Path) -> Path:
    """A one-unit Dense layer (kernel 0.5, bias 2) exported by Keras for serving."""
    import keras

    inputs = keras.Input(shape=(1,), name="x")
    dense = keras.layers.Dense(1, name="y")
    model = keras.Model(inputs, dense(inputs))
    dense.set_weights([np.array([[0.5]], np.float32), np.array([2.0], np.float32)])
    model.export(str(path), verbose=False)
    return path


def save_gated_half_plus_two(path: Path) -> Path:
    """Like ``save_half_plus_two`` with a second input, ``gate`` (a file path): a call
    returns only once that file exists (or after a bounded number of looks).  Tests hold
    requests in flight with it, then open the gate, instead of relying on timing."""
    import tensorflow as tf

    class Gated(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x"),
                                      tf.TensorSpec([], tf.string, name="gate")])
        def serve(self, x, gate):
            def closed(i):
                return tf.logical_and(tf.size(tf.io.matching_files(gate)) == 0,
                                      i < 100_000_000)

            (looks,) = tf.while_loop(closed, lambda i: (i + 1,), [tf.constant(0)])
            return {"y": x * 0.5 + 2.0, "looks": looks}

    module = Gated()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def save_marking_gated_half_plus_two(path: Path) -> Path:
    """Like ``save_gated_half_plus_two`` with a third input, ``mark`` (a file path): a run
    first writes that file, then waits for the gate.  Tests see whether a request was run
    at all (an expired one must not be)."""
    import tensorflow as tf

    class Marking(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x"),
                                      tf.TensorSpec([], tf.string, name="gate"),
                                      tf.TensorSpec([], tf.string, name="mark")])
        def serve(self, x, gate, mark):
            with tf.control_dependencies([tf.io.write_file(mark, "ran")]):
                start = tf.identity(tf.constant(0))

            def closed(i):
                return tf.logical_and(tf.size(tf.io.matching_files(gate)) == 0,
                                      i < 100_000_000)

            (looks,) = tf.while_loop(closed, lambda i: (i + 1,), [start])
            return {"y": x * 0.5 + 2.0, "looks": looks}

    module = Marking()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def half_plus_two(x: np.ndarray) -> np.ndarray:
    return x * 0.5 + 2


def put_version(base: Path, version: int, source: Path) -> Path:
    """Copy ``source`` to ``base/version`` atomically (as an export does): copy beside it,
    then rename into place, so the server never sees a half-copied directory."""
    staging = base / f".staging-{version}"
    shutil.copytree(source, staging)
    target = base / str(version)
    staging.rename(target)
    return target


def corrupt_graph(version_dir: Path) -> None:
    """Replace the SavedModel proto with bytes that do not parse."""
    (version_dir / "saved_model.pb").write_bytes(b"\x0a\xff\xff garbage, not a SavedModel")


def truncate_variables(version_dir: Path) -> None:
    """Cut every variables data shard to half its size (the index still lists them whole)."""
    for shard in (version_dir / "variables").glob("variables.data-*"):
        data = shard.read_bytes()
        shard.write_bytes(data[: len(data) // 2])


def held_request(gate: Path, mark: Path, model: str = "gated"):
    """A Predict of ``save_marking_gated_half_plus_two``'s model served as ``model``: it
    writes ``mark`` when it runs, then waits for ``gate``."""
    import numpy as np
    from tensorflow_serving.apis import predict_pb2

    from tfdeploy.tfs import tensors

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["x"].CopyFrom(tensors.to_proto(np.array([[1.0]], np.float32)))
    for key, path in (("gate", gate), ("mark", mark)):
        request.inputs[key].CopyFrom(tensors.to_proto(np.array(str(path).encode(), object)))
    return request


def serve_one(source: Path, tmp_path: Path, name: str, *flags: str):
    """A server for one model, ``source`` copied in as its version 1: (base path, server)."""
    from servers import ServerProcess

    base = tmp_path / name
    base.mkdir()
    put_version(base, 1, source)
    return base, ServerProcess(f"--model_name={name}", f"--model_base_path={base}", *flags,
                               log_dir=tmp_path)


def half_plus_b_tflite(b: float) -> bytes:
    """A TFLite model computing y = x / 2 + ``b`` for x of shape [?, 1], as converted from
    a tf.function: no ``signature_defs_metadata``, tensors named by the converter."""
    import tensorflow as tf

    class HalfPlusB(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
        def serve(self, x):
            return {"y": 0.5 * x + b}

    module = HalfPlusB()
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.serve.get_concrete_function()], module)
    return converter.convert()


def tflite_tensor_names(tflite: bytes) -> tuple[list[str], list[str]]:
    """The model's input and output tensor names."""
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_content=tflite)
    return ([d["name"] for d in interpreter.get_input_details()],
            [d["name"] for d in interpreter.get_output_details()])


def renamed_tensor(tflite: bytes, name: str, new_name: str) -> bytes:
    """``tflite`` with its tensor ``name`` renamed ``new_name``."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite))
    for tensor in model.subgraphs[0].tensors:
        if tensor.name == name.encode():
            tensor.name = new_name.encode()
            return bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    raise AssertionError(f"no tensor {name}")


def with_signature_metadata(tflite: bytes, signatures: dict[str, tuple[dict, dict]]) -> bytes:
    """``tflite`` with a ``signature_defs_metadata`` entry, the way TF Serving's TFLite
    models carry their SignatureDefs: a flexbuffer map, signature key -> serialized
    SignatureDef.  ``signatures``: key -> ({input alias: tensor name}, {output alias:
    tensor name}); names may carry TF's ``:0`` suffix."""
    from flatbuffers import flexbuffers
    from tensorflow.core.protobuf import meta_graph_pb2
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    builder = flexbuffers.Builder()
    with builder.Map():
        for key, (inputs, outputs) in signatures.items():
            sd = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
            for alias, name in inputs.items():
                sd.inputs[alias].name = name
                sd.inputs[alias].dtype = 1  # DT_FLOAT
            for alias, name in outputs.items():
                sd.outputs[alias].name = name
                sd.outputs[alias].dtype = 1
            data = sd.SerializeToString()
            # a flexbuffer string, as TF Serving's writer stores it; Builder.String takes
            # text, so the proto must be ASCII (it is: short names, no shapes)
            assert data.isascii(), data
            builder.String(key, data.decode("ascii"))
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite))
    buffer = schema.BufferT()
    buffer.data = list(builder.Finish())
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = "signature_defs_metadata", len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def add_tflite(saved_model: Path, b: float) -> Path:
    """Write ``model.tflite`` into a SavedModel directory: the same signature as
    ``save_half_plus_two`` (serving_default, x -> y, carried in the model's signature
    metadata) but y = x / 2 + ``b``, so answers tell which of the two models served them."""
    tflite = renamed_tensor(half_plus_b_tflite(b), "serving_default_x:0", "x_input")
    (y,) = tflite_tensor_names(tflite)[1]
    # "x_input:0" names the tensor "x_input" the way older TFLite converters named them
    tflite = with_signature_metadata(tflite, {"serving_default": ({"x": "x_input:0"},
                                                                  {"y": y})})
    (saved_model / "model.tflite").write_bytes(tflite)
    return saved_model
