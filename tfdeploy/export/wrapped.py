"""Keras models and SavedModels whose signature maps images to logits or labels.

Users' own segmentation models differ in three ways that matter to serving: the pixel
range they were trained on (``--preprocess``), whether they take any image size or one
fixed size (``--input-size``; a fixed static size is read from the model), and whether
they return logits (or probabilities) or labels.  ``WrappedModel`` absorbs all three so
our signatures (float 0..255 pixels in, labels at the input's size out) serve any of them.
"""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf

from tfdeploy.errors import UserError

#: --preprocess choices: what the model expects, made from 0..255 pixels.
PREPROCESS = ("0..255", "0..1", "-1..1", "imagenet")
DEFAULT_PREPROCESS = "0..255"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def preprocess(images: tf.Tensor, kind: str) -> tf.Tensor:
    """float32 0..255 pixels -> the model's range."""
    if kind == "0..255":
        return images
    if kind == "0..1":
        return images / 255.0
    if kind == "-1..1":
        return images / 127.5 - 1.0
    if kind == "imagenet":
        return (images / 255.0 - tf.constant(IMAGENET_MEAN)) / tf.constant(IMAGENET_STD)
    raise UserError(f"must be one of {', '.join(PREPROCESS)}, got {kind!r}", param="preprocess")


def parse_size(text: str | None) -> tuple[int, int] | None:
    """``HxW`` or ``N`` (square) -> (height, width)."""
    if not text:
        return None
    parts = text.lower().split("x")
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        size = ()
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or min(size) < 1:
        raise UserError(f"must be HEIGHTxWIDTH or N, got {text!r}", param="input_size")
    return size  # type: ignore[return-value]


def _load_keras(path: Path):
    try:
        return tf.keras.models.load_model(str(path), compile=False)
    except Exception as exc:  # Keras raises ValueError, OSError, TypeError... for bad files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: not a loadable Keras model ({first})") from None


def _frozen(call, in_shape: tuple):
    """``call`` (float32 images -> the model's output) with its variables made constants.

    The export must load in a TF1 session, as tensorflow_model_server (and our embedded
    server) load every SavedModel.  Saving the Keras 3 model's (or a restored
    SavedModel's) variables into ours does not: restoring them in a session fails ("Could
    not find variable conv2d/bias").  Constants need no restoring, like a frozen graph's."""
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    spec = tf.TensorSpec([None, in_shape[1], in_shape[2], 3], tf.float32)
    graph = convert_variables_to_constants_v2(tf.function(call).get_concrete_function(spec))

    def run(x: tf.Tensor) -> tf.Tensor:
        out = graph(x)
        return out[0] if isinstance(out, (list, tuple)) else out

    return run


class WrappedModel(tf.Module):
    """A Keras model or a SavedModel signature behind DeepLabV3's interface."""

    def __init__(self, path: Path, kind: str, preprocessing: str = DEFAULT_PREPROCESS,
                 input_size: tuple[int, int] | None = None, signature: str = "serving_default",
                 precision: str = "float32") -> None:
        super().__init__(name="wrapped_model")
        preprocess(tf.zeros([1, 1, 1, 3]), preprocessing)  # rejects an unknown choice early
        self.preprocessing = preprocessing
        if kind == "keras":
            keras_model = _load_keras(path)
            inputs = keras_model.inputs
            if len(inputs) != 1:
                raise UserError(f"{path}: the model has {len(inputs)} inputs; one image "
                                "input only")
            in_shape = tuple(inputs[0].shape)
            if precision != "float32":
                from tfdeploy.export.source_precision import keras_in

                keras_model = keras_in(keras_model, precision)

            def call(x):
                return keras_model(x, training=False)

            out_spec = keras_model.outputs[0]
            out_dtype, out_rank = tf.as_dtype(out_spec.dtype), len(out_spec.shape)
            channels = out_spec.shape[-1]
        else:
            try:
                saved = tf.saved_model.load(str(path))
            except Exception as exc:
                raise UserError(f"{path}: not a loadable SavedModel ({exc})") from None
            if signature not in saved.signatures:
                raise UserError(f"{path}: no signature {signature!r} (it has "
                                f"{', '.join(saved.signatures) or 'none'})")
            fn = saved.signatures[signature]
            args = fn.structured_input_signature[1]
            if len(args) != 1:
                raise UserError(f"{path}: signature {signature!r} takes {len(args)} inputs; "
                                "one image input only")
            (name, spec), = args.items()
            outputs = fn.structured_outputs
            key = sorted(outputs)[0]
            in_shape = tuple(spec.shape)

            def call(x):
                return fn(**{name: tf.cast(x, spec.dtype)})[key]

            out_dtype, out_rank = outputs[key].dtype, outputs[key].shape.rank
            channels = outputs[key].shape[-1] if out_rank else None
        if len(in_shape) != 4 or in_shape[-1] not in (None, 3):
            raise UserError(f"{path}: the input is {list(in_shape)}, not images "
                            "[N, H, W, 3]")
        self._call = _frozen(call, in_shape)
        fixed = (in_shape[1], in_shape[2]) if None not in in_shape[1:3] else None
        self.input_size = input_size or fixed
        self.logits_out = out_dtype.is_floating
        if self.logits_out and out_rank != 4:
            raise UserError(f"{path}: the output has rank {out_rank}; logits must be "
                            "[N, H, W, classes]")
        if not self.logits_out and not out_dtype.is_integer:
            raise UserError(f"{path}: the output is {out_dtype.name}: neither logits nor labels")
        self.num_classes = int(channels) if self.logits_out and channels else 21

    def _raw(self, images: tf.Tensor) -> tf.Tensor:
        size = tf.shape(images)[1:3]
        x = preprocess(images, self.preprocessing)
        if self.input_size:
            x = tf.image.resize(x, self.input_size, method="bilinear")
        out = self._call(x)
        if self.logits_out:
            out = tf.cast(out, tf.float32)
            return tf.image.resize(out, size, method="bilinear") if self.input_size else out
        out = tf.cast(out, tf.int64)
        if out.shape.rank == 4:
            out = out[..., 0]
        if self.input_size:
            out = tf.cast(tf.image.resize(out[..., tf.newaxis], size,
                                          method="nearest")[..., 0], tf.int64)
        return out

    def predict(self, images: tf.Tensor) -> tf.Tensor:
        out = self._raw(images)
        return tf.argmax(out, axis=-1) if self.logits_out else out

    def logits(self, images: tf.Tensor) -> tf.Tensor:
        """The model's logits; a labels model's labels one-hot (argmax gives them back)."""
        out = self._raw(images)
        return out if self.logits_out else tf.one_hot(out, self.num_classes)
