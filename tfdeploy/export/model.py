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


def resize_bilinear(x: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    """TF1's ``tf.image.resize_bilinear`` (no half-pixel centres), which the seed used.
    TF2's ``tf.image.resize`` samples differently and would break parity."""
    return tf.raw_ops.ResizeBilinear(
        images=x, size=size, align_corners=False, half_pixel_centers=False
    )


class DeepLabV3(tf.Module):
    """Inference-mode DeepLab-v3.  ``logits(images)`` takes float32 RGB 0..255 NHWC."""

    def __init__(self, config: ModelConfig, weights: Mapping[str, np.ndarray] | None = None):
        super().__init__(name="deeplab_v3")
        self.config = config
        self.units: list[Unit] = units(config)
        shapes = variable_shapes(config)
        self._index = {name: i for i, name in enumerate(shapes)}
        init = _initial_weights(shapes) if weights is None else weights
        self.variables_list = [
            tf.Variable(np.asarray(init[name], np.float32).reshape(shape), name=_var_name(name))
            for name, shape in shapes.items()
        ]

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
        y = x * scale + offset
        return tf.nn.relu(y) if relu else y

    def _unit(self, x, u: Unit):
        preact = self._bn(x, f"{u.scope}/preact", relu=True)
        if u.has_shortcut_conv:
            shortcut = self._bias(self._conv(preact, f"{u.scope}/shortcut", stride=u.stride),
                                  f"{u.scope}/shortcut")
        else:
            shortcut = x[:, :: u.stride, :: u.stride, :] if u.stride > 1 else x
        r = self._bn(self._conv(preact, f"{u.scope}/conv1"), f"{u.scope}/conv1", relu=True)
        r = self._conv(r, f"{u.scope}/conv2", stride=u.stride, rate=u.rate, same_explicit=True)
        r = self._bn(r, f"{u.scope}/conv2", relu=True)
        r = self._bias(self._conv(r, f"{u.scope}/conv3"), f"{u.scope}/conv3")
        return shortcut + r

    def _aspp(self, net):
        s = "DeepLab_v3/ASPP_layer"
        size = tf.shape(net)[1:3]
        image = tf.reduce_mean(net, [1, 2], keepdims=True)
        image = self._bn(self._conv(image, f"{s}/image_level_conv_1x1"),
                         f"{s}/image_level_conv_1x1", relu=False)
        branches = [resize_bilinear(image, size)]
        branches.append(self._bn(self._conv(net, f"{s}/conv_1x1_0"), f"{s}/conv_1x1_0", False))
        for i, rate in enumerate(self.config.aspp_rates, start=1):
            name = f"{s}/conv_3x3_{i}"
            branches.append(self._bn(self._conv(net, name, rate=rate), name, relu=False))
        net = tf.concat(branches, axis=3)
        return self._bn(self._conv(net, f"{s}/conv_1x1_output"), f"{s}/conv_1x1_output", False)

    def logits(self, images: tf.Tensor) -> tf.Tensor:
        """Per-pixel class logits at the input resolution, float32 [N, H, W, classes]."""
        c = self.config
        x = tf.cast(images, tf.float32) - tf.constant(c.mean, tf.float32)
        x = self._bias(self._conv(x, f"{c.scope}/conv1", stride=2, same_explicit=True),
                       f"{c.scope}/conv1")
        x = tf.nn.max_pool2d(x, 3, 2, padding="SAME")
        for u in self.units:
            x = self._unit(x, u)
        x = self._aspp(x)
        x = self._bias(self._conv(x, "DeepLab_v3/logits"), "DeepLab_v3/logits")
        return resize_bilinear(x, tf.shape(images)[1:3])

    def predict(self, images: tf.Tensor) -> tf.Tensor:
        """Class index per pixel, int64 [N, H, W]."""
        return tf.argmax(self.logits(images), axis=3)


def _var_name(slim_name: str) -> str:
    # tf.Variable names may not contain ':'; slashes are fine but keep them readable.
    return slim_name.replace(":", "_")


def _initial_weights(shapes: Mapping[str, tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
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
    weights = _initial_weights(variable_shapes(config), seed)
    for name, value in weights.items():
        if name.endswith("moving_mean"):
            weights[name] = rng.normal(0, 0.1, value.shape).astype(np.float32)
        elif name.endswith("moving_variance"):
            weights[name] = rng.uniform(0.5, 2.0, value.shape).astype(np.float32)
        elif name.endswith(("gamma",)):
            weights[name] = rng.uniform(0.5, 1.0, value.shape).astype(np.float32)
    return weights
