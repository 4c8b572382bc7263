"""Frozen GraphDefs (the DeepLab model zoo's ``frozen_inference_graph.pb``) as a model.

The zoo's graphs take ``ImageTensor:0`` (uint8 [1, ?, ?, 3]) and return
``SemanticPredictions:0`` (int64 [1, ?, ?], labels at the input's size); other frozen
graphs are named with ``--input-tensor`` / ``--output-tensor`` and may take float pixels
or return logits.  The graph is imported unchanged (its weights are constants in it) and
called from our signatures, so the export serves exactly what the graph computes, on any
server; ``FrozenGraphModel`` gives it the ``predict``/``logits`` interface of
``DeepLabV3`` so ``ServingModule`` wraps both alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfdeploy.errors import ExportError, UserError
from tfdeploy.export import warmup
from tfdeploy.export.agreement import Agreement, ImageAgreement
from tfdeploy.tfs.names import PREDICT_IMAGES, SEGMENTATION_MAP, SERVING_DEFAULT

#: The DeepLab model zoo's export contract.
ZOO_INPUT = "ImageTensor:0"
ZOO_OUTPUT = "SemanticPredictions:0"
#: Classes assumed for a graph that returns labels (no logits to count them from):
#: Pascal VOC's, the zoo's most common training set.
DEFAULT_LABEL_CLASSES = 21


def _tensor_name(name: str) -> str:
    return name if ":" in name else f"{name}:0"


@dataclass(frozen=True)
class GraphContract:
    """What the frozen graph's input and output are, read from the GraphDef."""

    input_name: str
    output_name: str
    input_dtype: tf.DType
    #: Static batch size of the input (the zoo's is 1); None when any batch is accepted.
    input_batch: int | None
    #: True when the output is per-pixel logits (float, [N, H, W, C]); else labels.
    logits: bool
    num_classes: int


def read_graph_def(path: Path, data: bytes | None = None) -> tf.compat.v1.GraphDef:
    """The GraphDef in ``path`` (or ``data``, read from it already), checked to be frozen."""
    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(path.read_bytes() if data is None else data)
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    except Exception:  # protobuf's DecodeError: not a GraphDef at all
        raise UserError(f"{path}: not a frozen TensorFlow graph (GraphDef)") from None
    if not graph_def.node:
        raise UserError(f"{path}: not a frozen TensorFlow graph (no nodes)")
    if any(n.op in ("VariableV2", "VarHandleOp", "Variable") for n in graph_def.node):
        raise UserError(f"{path}: the graph has variables, it is not frozen (freeze it, or "
                        "export its checkpoint instead)")
    return graph_def


def _import(graph_def: tf.compat.v1.GraphDef, input_name: str, output_name: str):
    """The graph as a concrete function from the input tensor to the output tensor."""

    def body() -> None:
        tf.compat.v1.import_graph_def(graph_def, name="")

    wrapped = tf.compat.v1.wrap_function(body, [])
    graph = wrapped.graph
    for what, name, flag in (("input", input_name, "--input-tensor"),
                             ("output", output_name, "--output-tensor")):
        try:
            graph.get_tensor_by_name(name)
        except (KeyError, ValueError):
            placeholders = [n.name for n in graph_def.node if n.op == "Placeholder"]
            hint = (f" (its placeholders: {', '.join(placeholders[:5])})"
                    if what == "input" and placeholders else "")
            raise UserError(f"the graph has no {what} tensor {name}{hint}; name it with "
                            f"{flag}") from None
    return wrapped.prune(feeds=graph.get_tensor_by_name(input_name),
                         fetches=graph.get_tensor_by_name(output_name)), graph


def contract(graph, input_name: str, output_name: str,
             num_classes: int | None) -> GraphContract:
    """Check that the tensors are an image input and a segmentation output."""
    inp, out = graph.get_tensor_by_name(input_name), graph.get_tensor_by_name(output_name)
    in_shape = inp.shape
    if in_shape.rank not in (None, 4) or (in_shape.rank == 4 and in_shape[3] not in (None, 3)):
        raise UserError(f"input {input_name} is {in_shape}, not images [N, H, W, 3]")
    if not (inp.dtype.is_floating or inp.dtype == tf.uint8):
        raise UserError(f"input {input_name} is {inp.dtype.name}; uint8 or float pixels only")
    logits = out.dtype.is_floating
    if logits and out.shape.rank not in (None, 4):
        raise UserError(f"output {output_name} is float {out.shape}: logits must be "
                        "[N, H, W, classes]")
    if not logits and not out.dtype.is_integer:
        raise UserError(f"output {output_name} is {out.dtype.name}: neither labels nor logits")
    classes = num_classes or DEFAULT_LABEL_CLASSES
    if logits and out.shape.rank == 4 and out.shape[3] is not None:
        classes = int(out.shape[3])
    return GraphContract(input_name, output_name, inp.dtype,
                         in_shape[0] if in_shape.rank == 4 else None, logits, classes)


class FrozenGraphModel(tf.Module):
    """A frozen graph behind DeepLabV3's interface: float32 pixels (0..255) in, labels
    (``predict``) or logits (``logits``) at the input's size out."""

    def __init__(self, graph_def: tf.compat.v1.GraphDef, input_tensor: str = ZOO_INPUT,
                 output_tensor: str = ZOO_OUTPUT, num_classes: int | None = None) -> None:
        super().__init__(name="frozen_graph")
        input_name, output_name = _tensor_name(input_tensor), _tensor_name(output_tensor)
        self._graph_fn, graph = _import(graph_def, input_name, output_name)
        self.contract = contract(graph, input_name, output_name, num_classes)

    def _run_one(self, images: tf.Tensor) -> tf.Tensor:
        """images: float32 [n, H, W, 3] with n the graph's batch size (or any)."""
        size = tf.shape(images)[1:3]
        if self.contract.input_dtype == tf.uint8:
            fed = tf.cast(tf.clip_by_value(tf.round(images), 0, 255), tf.uint8)
        else:
            fed = tf.cast(images, self.contract.input_dtype)
        out = self._graph_fn(fed)
        if self.contract.logits:
            out = tf.cast(out, tf.float32)
            if out.shape.rank == 4:  # some graphs give logits below the input's size
                out = tf.compat.v1.image.resize_bilinear(out, size, align_corners=True)
            return out
        out = tf.cast(out, tf.int64)
        if out.shape.rank == 4:
            out = out[..., 0]
        same = tf.reduce_all(tf.equal(tf.shape(out)[1:3], size))
        return tf.cond(same, lambda: out, lambda: tf.cast(tf.image.resize(
            out[..., tf.newaxis], size, method="nearest")[..., 0], tf.int64))

    def _run(self, images: tf.Tensor) -> tf.Tensor:
        if self.contract.input_batch is None:
            return self._run_one(images)
        # The zoo's graphs take one image at a time: run the batch image by image.
        spec = (tf.TensorSpec([None, None, self.contract.num_classes], tf.float32)
                if self.contract.logits else tf.TensorSpec([None, None], tf.int64))
        return tf.map_fn(lambda image: self._run_one(image[tf.newaxis])[0], images,
                         fn_output_signature=spec)

    def predict(self, images: tf.Tensor) -> tf.Tensor:
        out = self._run(images)
        return tf.argmax(out, axis=-1) if self.contract.logits else out

    def logits(self, images: tf.Tensor) -> tf.Tensor:
        """Logits as the graph gives them; a graph that returns labels has none, so its
        labels one-hot (argmax gives the labels back, which is what verification uses)."""
        out = self._run(images)
        if self.contract.logits:
            return out
        return tf.one_hot(out, self.contract.num_classes, dtype=tf.float32)


def verify(version_dir: Path, reference, probes: list[tuple[str, np.ndarray]],
           what: str = "the frozen graph's") -> Agreement:
    """Reload the written SavedModel and require, on every probe image, that both
    signatures' masks equal the source model's own (``reference.predict``, run in memory,
    not through the export) on every pixel: wrapping must change nothing."""
    loaded = tf.saved_model.load(str(version_dir))
    result = Agreement()
    for name, image in probes:
        batch = tf.constant(image[None].astype(np.float32))
        expected = reference.predict(batch).numpy()
        h, w = image.shape[:2]
        got = loaded.signatures[PREDICT_IMAGES](
            images=batch, height=tf.constant([h]), width=tf.constant(w))[SEGMENTATION_MAP]
        encoded = loaded.signatures[SERVING_DEFAULT](
            image_bytes=tf.constant([warmup.encode_png(image)]))[SEGMENTATION_MAP]
        for signature, mask in ((PREDICT_IMAGES, got.numpy()),
                                (SERVING_DEFAULT, encoded.numpy().astype(np.int64))):
            agree = float(np.mean(mask == expected))
            if agree < 1.0:
                raise ExportError(
                    f"verification failed on {name}: {signature} masks equal {what} on "
                    f"{agree:.2%} of the pixels (required 100%)")
        result.images.append(ImageAgreement(name=name, height=h, width=w, pixel_agreement=1.0,
                                            max_abs_logit_diff=0.0, max_abs_logit=0.0))
    return result
