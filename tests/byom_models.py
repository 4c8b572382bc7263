"""Models users bring, made in the test session: frozen graphs with the DeepLab model
zoo's export contract (and variants of it), built from TF1 graph ops with constants only."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import tensorflow as tf


def frozen_graph(path: Path, classes: int = 5, seed: int = 0, input_dtype=tf.uint8,
                 input_name: str = "ImageTensor", output_name: str = "SemanticPredictions",
                 logits: bool = False, batch: int | None = 1) -> Path:
    """A frozen segmentation graph like the zoo's: image [batch, ?, ?, 3] in, computed at
    about half the input's size (the zoo's resize to 513), and labels (int64 [1, H, W])
    or logits (float32 [1, H, W, classes]) at the input's size out."""
    rng = np.random.default_rng(seed)
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(input_dtype, [batch, None, None, 3], name=input_name)
        pixels = tf.cast(x, tf.float32) / 127.5 - 1.0
        size = tf.shape(x)[1:3]
        small = tf.compat.v1.image.resize_bilinear(pixels, size // 2 + 1, align_corners=True)
        w1 = tf.constant(rng.normal(size=(3, 3, 3, 8)).astype(np.float32))
        w2 = tf.constant(rng.normal(size=(1, 1, 8, classes)).astype(np.float32))
        y = tf.nn.conv2d(tf.nn.relu(tf.nn.conv2d(small, w1, 1, "SAME")), w2, 1, "SAME")
        y = tf.compat.v1.image.resize_bilinear(y, size, align_corners=True)
        if logits:
            tf.identity(y, name=output_name)
        else:
            tf.argmax(y, axis=-1, name=output_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(graph.as_graph_def().SerializeToString())
    return path


def run_frozen(path: Path, image: np.ndarray, input_name: str = "ImageTensor:0",
               output_name: str = "SemanticPredictions:0") -> np.ndarray:
    """The graph's own output for one image, run in a TF1 session as its authors would."""
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(path.read_bytes())
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as sess:
        dtype = graph.get_tensor_by_name(input_name).dtype.as_numpy_dtype
        return sess.run(output_name, {input_name: image[None].astype(dtype)})


def zoo_tarball(path: Path, graph: Path, folder: str = "deeplabv3_test_pascal") -> Path:
    """The zoo's .tar.gz layout: folder/frozen_inference_graph.pb next to model.ckpt."""
    with tarfile.open(path, "w:gz") as tar:
        tar.add(graph, arcname=f"{folder}/frozen_inference_graph.pb")
        info = tarfile.TarInfo(f"{folder}/model.ckpt.index")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"ckpt"))
    return path


def keras_model(path: Path, classes: int = 4, seed: int = 0, size: int | None = None) -> Path:
    """A small fully-convolutional Keras segmenter (logits), any input size unless
    ``size`` fixes it; saved as ``.keras``."""
    keras = tf.keras
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(classes, 1, padding="same")(x)
    model = keras.Model(inputs, x)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return path


def segmenting_saved_model(path: Path, classes: int = 3, seed: int = 1) -> Path:
    """A SavedModel (tf.Module) whose serving_default maps float images (-1..1) to logits."""
    rng = np.random.default_rng(seed)

    class Segmenter(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(rng.normal(size=(3, 3, 3, classes)).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
        def __call__(self, x):
            return {"logits": tf.nn.conv2d(x * 3.0, self.w, 1, "SAME")}

    module = Segmenter()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.__call__})
    return path
