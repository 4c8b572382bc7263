"""DeepLab-v3 (ResNet-v2 backbone, ASPP) in TensorFlow 2, numerically equal to the seed's
TF1/slim graph at inference time.

Weights live in a flat list of ``tf.Variable`` addressed by their slim names, so a
name-based checkpoint maps onto the model with no translation table, and the SavedModel we
write carries exactly the weights of the checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import tensorflow as tf

from tfdeploy.export.config import ModelConfig
from tfdeploy.export.layout import Unit, units, variable_shapes
from tfdeploy.export.precision import check_precision
from tfdeploy.export.precision import fold_batch_norm as fold


def resize_bilinear(x: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    """TF1's ``tf.image.resize_bilinear`` (no half-pixel centres), which the seed used.
    TF2's ``tf.image.resize`` samples differently and would break parity."""
    return tf.raw_ops.ResizeBilinear(
        images=x, size=size, align_corners=False, half_pixel_centers=False
    )


class DeepLabV3(tf.Module):
    """Inference-mode DeepLab-v3.  ``logits(images)`` takes float32 RGB 0..255 NHWC."""

    def __init__(self, config: ModelConfig, weights: Mapping[str, np.ndarray] | None = None,
                 precision: str = "float32", fold_batch_norm: bool = False):
        """``precision`` is the dtype convolutions store weights and compute in (logits
        and argmax stay float32); ``fold_batch_norm`` folds each convolution's BatchNorm
        into its weights (see ``precision.fold_batch_norm``).  The defaults build the
        plain slim graph that training and the reference comparisons use."""
        super().__init__(name="deeplab_v3")
        self.config = config
        self.precision = check_precision(precision)
        self.compute_dtype = tf.as_dtype(precision)
        self.folded = fold_batch_norm
        self.units: list[Unit] = units(config)
        shapes = variable_shapes(config)
        init = initial_weights(shapes) if weights is None else weights
        init = {name: np.asarray(init[name], np.float32).reshape(shape)
                for name, shape in shapes.items()}
        if fold_batch_norm:
            init = fold(init, config.batch_norm_epsilon)
        self._index = {name: i for i, name in enumerate(init)}
        self.variables_list = [
            tf.Variable(value.astype(self._storage_dtype(name)), name=_var_name(name))
            for name, value in init.items()
        ]

    def _storage_dtype(self, name: str):
        """Convolution weights and biases in the compute precision (they feed its kernels);
        the logits layer and batch-norm statistics in float32 (precision where it is
        cheap: the logits are compared across precisions, statistics are per channel)."""
        if name.startswith("DeepLab_v3/logits/") or name.rsplit("/", 1)[1] not in (
                "weights", "biases"):
            return np.float32
        return self.compute_dtype.as_numpy_dtype

    # -- weights -------------------------------------------------------------------------
    def weight(self, name: str) -> tf.Variable:
        return self.variables_list[self._index[name]]

    def named_weights(self) -> dict[str, np.ndarray]:
        return {name: self.variables_list[i].numpy() for name, i in self._index.items()}

    # -- layers --------------------------------------------------------------------------
    def _conv(self, x, scope: str, stride: int = 1, rate: int = 1, same_explicit: bool = False):
        w = self.weight(f"{scope}/weights")
        k = int(w.shape[0])
        if same_explicit and stride > 1:
            # slim's conv2d_same: pad explicitly so the result does not depend on input parity.
            eff = k + (k - 1) * (rate - 1)
            beg = (eff - 1) // 2
            x = tf.pad(x, [[0, 0], [beg, eff - 1 - beg], [beg, eff - 1 - beg], [0, 0]])
            return tf.nn.conv2d(x, w, strides=stride, padding="VALID")
        return tf.nn.conv2d(x, w, strides=stride, padding="SAME", dilations=rate)

    def _bias(self, x, scope: str):
        return tf.nn.bias_add(x, self.weight(f"{scope}/biases"))

    def _bn(self, x, scope: str, relu: bool):
        # slim: a conv's normalizer lives under "<conv>/BatchNorm", a bare batch_norm
        # (the pre-activation) directly under its own scope.
        p = f"{scope}/" if scope.endswith("/preact") else f"{scope}/BatchNorm/"
        scale = self.weight(p + "gamma") * tf.math.rsqrt(
            self.weight(p + "moving_variance") + self.config.batch_norm_epsilon
        )
        offset = self.weight(p + "beta") - self.weight(p + "moving_mean") * scale
        y = x * tf.cast(scale, x.dtype) + tf.cast(offset, x.dtype)
        return tf.nn.relu(y) if relu else y

    def _conv_bn(self, x, scope: str, relu: bool, **conv):
        """A convolution and its BatchNorm: one biased convolution once folded."""
        if self.folded:
            y = self._bias(self._conv(x, scope, **conv), scope)
            return tf.nn.relu(y) if relu else y
        return self._bn(self._conv(x, scope, **conv), scope, relu)

    def _preact(self, x, scope: str):
        if not self.folded:
            return self._bn(x, scope, relu=True)
        # One fused kernel (statistics in float32 whatever x is) instead of a multiply and
        # an add over the whole feature map: measurably faster in every precision.
        y, _, _ = tf.compat.v1.nn.fused_batch_norm(
            x, self.weight(f"{scope}/gamma"), self.weight(f"{scope}/beta"),
            mean=self.weight(f"{scope}/moving_mean"),
            variance=self.weight(f"{scope}/moving_variance"),
            epsilon=self.config.batch_norm_epsilon, is_training=False)
        return tf.nn.relu(y)

    def _unit(self, x, u: Unit):
        preact = self._preact(x, f"{u.scope}/preact")
        if u.has_shortcut_conv:
            shortcut = self._bias(self._conv(preact, f"{u.scope}/shortcut", stride=u.stride),
                                  f"{u.scope}/shortcut")
        else:
            shortcut = x[:, :: u.stride, :: u.stride, :] if u.stride > 1 else x
        r = self._conv_bn(preact, f"{u.scope}/conv1", relu=True)
        r = self._conv_bn(r, f"{u.scope}/conv2", relu=True, stride=u.stride, rate=u.rate,
                          same_explicit=True)
        r = self._bias(self._conv(r, f"{u.scope}/conv3"), f"{u.scope}/conv3")
        return shortcut + r

    def _aspp(self, net):
        s = "DeepLab_v3/ASPP_layer"
        size = tf.shape(net)[1:3]
        # Mean over all positions in float32 (a long sum), resized back in float32
        # (ResizeBilinear computes in float32 whatever its input).
        image = tf.reduce_mean(tf.cast(net, tf.float32), [1, 2], keepdims=True)
        image = tf.cast(image, self.compute_dtype)
        image = self._conv_bn(image, f"{s}/image_level_conv_1x1", False)
        branches = [tf.cast(resize_bilinear(image, size), self.compute_dtype)]
        branches.append(self._conv_bn(net, f"{s}/conv_1x1_0", False))
        for i, rate in enumerate(self.config.aspp_rates, start=1):
            branches.append(self._conv_bn(net, f"{s}/conv_3x3_{i}", False, rate=rate))
        net = tf.concat(branches, axis=3)
        return self._conv_bn(net, f"{s}/conv_1x1_output", False)

    def logits(self, images: tf.Tensor) -> tf.Tensor:
        """Per-pixel class logits at the input resolution, float32 [N, H, W, classes].
        The backbone and ASPP run in ``precision``; the logits layer, the resize and
        everything after it in float32."""
        c = self.config
        x = tf.cast(images, tf.float32) - tf.constant(c.mean, tf.float32)
        x = tf.cast(x, self.compute_dtype)
        x = self._bias(self._conv(x, f"{c.scope}/conv1", stride=2, same_explicit=True),
                       f"{c.scope}/conv1")
        x = tf.nn.max_pool2d(x, 3, 2, padding="SAME")
        for u in self.units:
            x = self._unit(x, u)
        x = tf.cast(self._aspp(x), tf.float32)
        x = self._bias(self._conv(x, "DeepLab_v3/logits"), "DeepLab_v3/logits")
        return resize_bilinear(x, tf.shape(images)[1:3])

    def predict(self, images: tf.Tensor) -> tf.Tensor:
        """Class index per pixel, int64 [N, H, W]."""
        return tf.argmax(self.logits(images), axis=3)


def _var_name(slim_name: str) -> str:
    # tf.Variable names may not contain ':'; slashes are fine but keep them readable.
    return slim_name.replace(":", "_")


def initial_weights(shapes: Mapping[str, tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
    """He-initialised convolutions and identity batch norm: the starting point for training
    (the demo) and for random-weight benchmarks."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name, shape in shapes.items():
        leaf = name.rsplit("/", 1)[1]
        if leaf == "weights":
            fan_in = int(np.prod(shape[:3]))
            out[name] = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape).astype(np.float32)
        elif leaf in ("gamma", "moving_variance"):
            out[name] = np.ones(shape, np.float32)
        else:  # biases, beta, moving_mean
            out[name] = np.zeros(shape, np.float32)
    return out


def random_weights(config: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights with non-trivial batch-norm statistics (benchmarks, tests)."""
    rng = np.random.default_rng(seed)
    weights = initial_weights(variable_shapes(config), seed)
    for name, value in weights.items():
        if name.endswith("moving_mean"):
            weights[name] = rng.normal(0, 0.1, value.shape).astype(np.float32)
        elif name.endswith("moving_variance"):
            weights[name] = rng.uniform(0.5, 2.0, value.shape).astype(np.float32)
        elif name.endswith(("gamma",)):
            weights[name] = rng.uniform(0.5, 1.0, value.shape).astype(np.float32)
    return weights
