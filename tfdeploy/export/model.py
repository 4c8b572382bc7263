"""DeepLab-v3 (ResNet-v2 backbone, ASPP) in TensorFlow 2, numerically equal to the seed's
TF1/slim graph at inference time.

Weights live in a flat list of ``tf.Variable`` addressed by their slim names, so a
name-based checkpoint maps onto the model with no translation table, and the SavedModel we
write carries exactly the weights of the checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import tensorflow as tf

from tfdeploy.export.config import INT8_KERNELS, ModelConfig
from tfdeploy.export.layout import Unit, units, variable_shapes
from tfdeploy.export.precision import (
    check_precision,
    float_convs,
    fold_preact,
    quantize_weights,
)
from tfdeploy.export.precision import fold_batch_norm as fold

#: The ASPP block's scope: a block ``float_blocks`` can name, like a bottleneck unit's.
ASPP_SCOPE = "DeepLab_v3/ASPP_layer"

#: The declared input range of a unit's merged shortcut + conv3 (``_merge_residuals``):
#: each input's step is in the weights, so one quint8 level counts as one.
MERGED_INPUT_RANGE = 255.0

#: The key ``calibrate`` records ``fold_preacts`` under in the ranges it returns.
PREACTS_FOLDED = "fold:preacts"

#: Candidate int8 clipping ranges, as fractions of a tensor's calibrated max |value|.
CLIP_FRACTIONS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)


def resize_bilinear(x: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    """TF1's ``tf.image.resize_bilinear`` (no half-pixel centres), which the seed used.
    TF2's ``tf.image.resize`` samples differently and would break parity."""
    return tf.raw_ops.ResizeBilinear(
        images=x, size=size, align_corners=False, half_pixel_centers=False
    )


class DeepLabV3(tf.Module):
    """Inference-mode DeepLab-v3.  ``logits(images)`` takes float32 RGB 0..255 NHWC."""

    def __init__(self, config: ModelConfig, weights: Mapping[str, np.ndarray] | None = None,
                 precision: str = "float32", fold_batch_norm: bool = False,
                 activation_ranges: Mapping[str, float] | None = None,
                 float_blocks: Iterable[str] = (), mixed: bool = False,
                 block_precision: str = "float32", int8_kernels: str = "fused",
                 fold_preacts: bool | None = None):
        """``precision`` is the dtype convolutions store weights and compute in (logits
        and argmax stay float32); ``fold_batch_norm`` folds each convolution's BatchNorm
        into its weights (see ``precision.fold_batch_norm``).  The defaults build the
        plain slim graph that training and the reference comparisons use.

        ``int8`` needs folded BatchNorm and ``activation_ranges`` (from ``calibrate`` on a
        float32 folded model): convolutions other than the first, the image-level pooling
        and the logits run as oneDNN int8 kernels with per-channel weight scales, their int8
        weights int8 variables (``int8_weights``; with the portable kernels, constants in
        the graph: their rewrite caches only a constant filter). ``float_blocks``
        (bottleneck unit scopes, or ``ASPP_SCOPE``) stay float32 in an int8 model: the
        blocks whose 8-bit activations cost the most agreement (see
        ``choose_float_blocks``).  ``mixed`` builds both paths of every block and picks one
        per block at run time from a mask: the sensitivity pass measures every mixture on
        one traced graph.  ``block_precision`` is what those blocks compute in: ``bfloat16``
        on a CPU with native bfloat16 kernels (about twice float32's speed there, and far
        closer to float32 than 8-bit activations), cast at the block's boundaries; the
        residual stream between blocks stays float32.  ``int8_kernels``
        (``precision.INT8_KERNELS``) is which oneDNN kernels an int8 model runs on:
        ``fused`` needs TensorFlow 2.17 or later.

        ``fold_preacts`` (with ``fold_batch_norm``) folds the pre-activation norms into
        the residual stream (``precision.fold_preact``): an int8 model quantizes the
        stream itself.  An int8 model does what its ``activation_ranges`` were calibrated
        with (``calibrate`` records it); a float model folds them only when asked."""
        super().__init__(name="deeplab_v3")
        self.config = config
        self.precision = check_precision(precision)
        self.int8 = precision == "int8"
        self.compute_dtype = tf.float32 if self.int8 else tf.as_dtype(precision)
        self.folded = fold_batch_norm
        #: Calibration taps: name -> per-image max |activation|, filled while tracing.
        self._taps: dict[str, tf.Tensor] | None = None
        self.ranges = dict(activation_ranges or {})
        if self.int8 and not (fold_batch_norm and activation_ranges):
            raise ValueError("int8 needs fold_batch_norm=True and activation_ranges")
        calibrated = bool(self.ranges.get(PREACTS_FOLDED, 0.0))
        if self.int8 and fold_preacts is not None and fold_preacts != calibrated:
            raise ValueError(f"fold_preacts={fold_preacts} but the activation ranges were "
                             f"calibrated with fold_preacts={calibrated}")
        self.fold_preacts = calibrated if self.int8 else bool(fold_preacts)
        if self.fold_preacts and not fold_batch_norm:
            raise ValueError("fold_preacts needs fold_batch_norm=True")
        self.units: list[Unit] = units(config)
        #: Blocks an int8 model can run in int8, in graph order.
        self.blocks = [u.scope for u in self.units] + [ASPP_SCOPE]
        self.float_blocks = frozenset(float_blocks)
        if unknown := self.float_blocks - set(self.blocks):
            raise ValueError(f"no such blocks: {sorted(unknown)}")
        self.mixed = mixed
        if block_precision not in ("float32", "bfloat16"):
            raise ValueError(f"block_precision must be float32 or bfloat16, not {block_precision}")
        #: What an int8 model's float blocks compute in.
        self.block_dtype = tf.as_dtype(block_precision)
        #: What the first convolution and the ASPP's projection compute in: the
        #: compute dtype, except in an int8 model (which keeps them out of int8, see
        #: ``float_convs``), where they take ``block_precision`` too.
        self.edge_dtype = self.block_dtype if self.int8 else self.compute_dtype
        if int8_kernels not in INT8_KERNELS:
            raise ValueError(f"int8_kernels must be one of {INT8_KERNELS}, not {int8_kernels}")
        #: 1x1 convolutions with a float32 output as one fused kernel (``_qconv``)
        self.fused = int8_kernels == "fused"
        #: While ``choose_float_blocks`` traces: bool per block, True = run it in float32.
        self._mask: tf.Tensor | None = None
        #: Range stretch of the block being traced (see ``_quantize``).
        self._stretch: tf.Tensor | None = None
        shapes = variable_shapes(config)
        init = initial_weights(shapes) if weights is None else weights
        init = {name: np.asarray(init[name], np.float32).reshape(shape)
                for name, shape in shapes.items()}
        if fold_batch_norm:
            init = fold(init, config.batch_norm_epsilon)
        #: Units whose pre-activation is a bare ReLU of the stream (``fold_preact``), and
        #: the factor that turns the last unit's output back into the backbone's.
        self._bare_preacts: frozenset[str] = frozenset()
        self._output_scale: np.ndarray | None = None
        if self.fold_preacts:
            init, self._bare_preacts, self._output_scale = fold_preact(
                init, self.units, f"{config.scope}/conv1", config.batch_norm_epsilon)
        #: int8 convolutions: scope -> (int8 weights, per-channel max |w|, float32 bias).
        self._quantized: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        if self.int8:
            self._merge_residuals(init)
            for name in [n for n in init if n.endswith("/weights")]:
                scope = name[: -len("/weights")]
                if scope in float_convs(config) or any(
                        scope.startswith(b + "/") for b in self.float_blocks):
                    continue
                # A mixed model keeps the float32 weights too (for the float path).
                take = init.get if mixed else init.pop
                wq, wmax = quantize_weights(take(name))
                self._quantized[scope] = (wq, wmax, take(f"{scope}/biases"))
            #: The fused kernels' int8 weights, as int8 variables: the kernels cache
            #: their reordered copy on the first call (``is_filter_const``), so a server
            #: holds them once.  Constants would sit in the graph, and a server (a TF
            #: Serving session) copies a graph's constants into every signature's
            #: executor: resnet_v2_50, 37 MB of weights, ~110 MB per signature.  The
            #: portable kernels' rewrite only caches a constant filter, so those stay.
            #: (A merged residual replaces its unit's conv3 and shortcut: not stored.)
            merged = [s.removesuffix("/residual") for s in self._quantized
                      if s.endswith("/residual")]
            unused = {f"{u}/{conv}" for u in merged for conv in ("conv3", "shortcut")}
            self.int8_weights: dict[str, tf.Variable] = {
                scope: tf.Variable(wq, trainable=False,
                                   name=_var_name(f"{scope}/int8_weights"))
                for scope, (wq, _, _) in self._quantized.items()
                if scope not in unused} if self.fused else {}
            # One traced graph shared by every signature: the int8 graph (and, with
            # the portable kernels, its weight constants) is not copied per signature.
            self._int8_logits = tf.function(
                self._logits, input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
        self._index = {name: i for i, name in enumerate(init)}
        self.variables_list = [
            tf.Variable(tf.cast(value, self._storage_dtype(name)), name=_var_name(name))
            for name, value in init.items()
        ]

    def _merge_residuals(self, init: Mapping[str, np.ndarray]) -> None:
        """A unit with a shortcut convolution (stride 1) adds two int8 convolutions' float32
        outputs.  Both are 1x1 over int8 tensors whose ranges share one stretch, so one
        convolution over the two inputs side by side computes the sum: each part's
        weights scaled by its input's calibrated step, quantized per output channel
        together, the biases added.  One int32 output to read back instead of two, and
        no separate sum (measured: 2-8 ms of the resnet_v2_50 int8 graph's 94-102 ms).
        Stored as ``<unit>/residual``, read with a declared input range of
        ``MERGED_INPUT_RANGE`` (the steps are in the weights; the stretch still applies)."""
        for u in self.units:
            sc, c3 = f"{u.scope}/shortcut", f"{u.scope}/conv3"
            if not u.has_shortcut_conv or u.stride != 1 or u.scope in self.float_blocks:
                continue
            p_step = max(float(self.ranges[f"{u.scope}/preact"]), 1e-6) / 255.0
            r_step = max(float(self.ranges[f"{u.scope}/conv2"]), 1e-6) / 255.0
            w = np.concatenate([np.asarray(init[f"{sc}/weights"], np.float64) * p_step,
                                np.asarray(init[f"{c3}/weights"], np.float64) * r_step], axis=2)
            wq, wmax = quantize_weights(w)
            bias = np.asarray(init[f"{sc}/biases"], np.float64) + init[f"{c3}/biases"]
            self._quantized[f"{u.scope}/residual"] = (wq, wmax, bias.astype(np.float32))

    def _storage_dtype(self, name: str) -> tf.DType:
        """Convolution weights and biases in the compute precision (they feed its kernels);
        the logits layer and batch-norm statistics in float32 (precision where it is
        cheap: the logits are compared across precisions, statistics are per channel).
        In an int8 model, the convolutions of its float blocks, its first one and the
        ASPP's projection in ``block_precision`` (a mixed model keeps float32 and casts:
        it is only measured, never served)."""
        if name.startswith("DeepLab_v3/logits/") or name.rsplit("/", 1)[1] not in (
                "weights", "biases"):
            return tf.float32
        if self.int8:
            scope = name.rsplit("/", 1)[0]
            in_block = any(scope.startswith(b + "/") for b in self.float_blocks)
            edge = scope in (f"{self.config.scope}/conv1", f"{ASPP_SCOPE}/conv_1x1_output")
            if ((in_block or edge) and not self.mixed
                    and not scope.endswith("/image_level_conv_1x1")):
                return self.block_dtype
            return tf.float32
        return self.compute_dtype

    # -- weights -------------------------------------------------------------------------
    def weight(self, name: str) -> tf.Variable:
        return self.variables_list[self._index[name]]

    def named_weights(self) -> dict[str, np.ndarray]:
        return {name: self.variables_list[i].numpy() for name, i in self._index.items()}

    # -- layers --------------------------------------------------------------------------
    def _conv(self, x, scope: str, stride: int = 1, rate: int = 1, same_explicit: bool = False):
        w = _as(self.weight(f"{scope}/weights"), x.dtype)
        k = int(w.shape[0])
        if same_explicit and stride > 1:
            # slim's conv2d_same: pad explicitly so the result does not depend on input parity.
            eff = k + (k - 1) * (rate - 1)
            beg = (eff - 1) // 2
            x = tf.pad(x, [[0, 0], [beg, eff - 1 - beg], [beg, eff - 1 - beg], [0, 0]])
            return tf.nn.conv2d(x, w, strides=stride, padding="VALID")
        return tf.nn.conv2d(x, w, strides=stride, padding="SAME", dilations=rate)

    def _bias(self, x, scope: str):
        return tf.nn.bias_add(x, _as(self.weight(f"{scope}/biases"), x.dtype))

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
            return self._tap(scope, tf.nn.relu(y) if relu else y)
        return self._bn(self._conv(x, scope, **conv), scope, relu)

    def _preact(self, x, scope: str):
        if not self.folded:
            return self._bn(x, scope, relu=True)
        if scope.removesuffix("/preact") in self._bare_preacts:
            return self._tap(scope, tf.nn.relu(x))
        # One fused kernel (statistics in float32 whatever x is) instead of a multiply and
        # an add over the whole feature map: measurably faster in every precision.
        y, _, _ = tf.compat.v1.nn.fused_batch_norm(
            x, self.weight(f"{scope}/gamma"), self.weight(f"{scope}/beta"),
            mean=self.weight(f"{scope}/moving_mean"),
            variance=self.weight(f"{scope}/moving_variance"),
            epsilon=self.config.batch_norm_epsilon, is_training=False)
        return self._tap(scope, tf.nn.relu(y))

    def _in_int8(self, block: str, int8_path, float_path):
        """``block`` in int8 or float32: as built, or (mixed model) as the mask says."""
        if self._mask is not None:
            return tf.cond(self._mask[self.blocks.index(block)], float_path, int8_path)
        return int8_path() if self.int8 and block not in self.float_blocks else float_path()

    def _unit(self, x, u: Unit):
        def int8_path():
            # a bare ReLU is left to the unsigned quantization, which clips at zero
            bare = u.scope in self._bare_preacts
            return self._unit_int8(x, x if bare else self._preact(x, f"{u.scope}/preact"), u)

        return self._in_int8(u.scope, int8_path, lambda: self._unit_float(x, u))

    def _float_block(self, block, x, *args):
        """``block(x, *args)`` in the model's float dtype: an int8 model's float blocks in
        ``block_precision``, cast in and out (the int8 blocks around them take float32)."""
        dtype = self.block_dtype if self.int8 else x.dtype
        if dtype == x.dtype:
            return block(x, *args)
        return tf.cast(block(tf.cast(x, dtype), *args), x.dtype)

    def _unit_float(self, x, u: Unit):
        """The bottleneck in the model's float dtype.  An int8 model's float block
        computes in ``block_precision`` from its pre-activation on, but its residual sum
        stays in x's float32: rounding the residual stream itself to bfloat16 in every
        such block cost more agreement than the blocks gained."""
        dtype = self.block_dtype if self.int8 else x.dtype
        preact = self._preact(_as(x, dtype), f"{u.scope}/preact")
        if u.has_shortcut_conv:
            shortcut = _as(self._tap(f"{u.scope}/shortcut", self._bias(
                self._conv(preact, f"{u.scope}/shortcut", stride=u.stride),
                f"{u.scope}/shortcut")), x.dtype)
        else:
            shortcut = _subsample(x, u.stride)
        r = self._conv_bn(preact, f"{u.scope}/conv1", relu=True)
        r = self._conv_bn(r, f"{u.scope}/conv2", relu=True, stride=u.stride, rate=u.rate,
                          same_explicit=True)
        r = self._tap(f"{u.scope}/conv3",
                      self._bias(self._conv(r, f"{u.scope}/conv3"), f"{u.scope}/conv3"))
        return shortcut + _as(r, x.dtype)

    def _aspp(self, net):
        s = "DeepLab_v3/ASPP_layer"
        size = tf.shape(net)[1:3]
        # Mean over all positions in float32 (a long sum), resized back in float32
        # (ResizeBilinear computes in float32 whatever its input).
        image = tf.reduce_mean(tf.cast(net, tf.float32), [1, 2], keepdims=True)
        image = tf.cast(image, self.compute_dtype)
        image = self._conv_bn(image, f"{s}/image_level_conv_1x1", False)
        branches = [tf.cast(resize_bilinear(image, size), self.compute_dtype)]
        return self._in_int8(ASPP_SCOPE, lambda: self._aspp_int8(net, list(branches)),
                             lambda: self._float_block(self._aspp_float, net, branches))

    def _aspp_float(self, net, branches):
        s = ASPP_SCOPE
        branches = [_as(b, net.dtype) for b in branches]
        self._tap(f"{s}:input", net)
        branches.append(self._conv_bn(net, f"{s}/conv_1x1_0", False))
        for i, rate in enumerate(self.config.aspp_rates, start=1):
            branches.append(self._conv_bn(net, f"{s}/conv_3x3_{i}", False, rate=rate))
        net = self._tap(f"{s}:concat", tf.concat(branches, axis=3))
        return self._conv_bn(net, f"{s}/conv_1x1_output", False)

    # -- int8 ----------------------------------------------------------------------------
    def _tap(self, name: str, x: tf.Tensor) -> tf.Tensor:
        """While ``calibrate`` traces: record max |x| and the int8 rounding error of each
        candidate clipping range under ``name``.  x passes unchanged."""
        if self._taps is not None:
            a = tf.reshape(tf.cast(x, tf.float32), [-1])
            top = tf.reduce_max(tf.abs(a))
            levels = tf.where(tf.reduce_min(a) >= 0, 255.0, 127.0)
            errors = []
            for f in CLIP_FRACTIONS:
                step = tf.maximum(top * f, 1e-12) / levels
                q = tf.clip_by_value(tf.round(a / step), -levels, levels) * step
                errors.append(tf.reduce_mean(tf.square(q - a)))
            self._taps[name] = tf.stack([top, *errors])
        return x

    def _range(self, name: str):
        """The calibrated range of ``name``, stretched (see ``_quantize``)."""
        # A tensor that was all zeros on the calibration images still needs a scale.
        return self._stretched(max(float(self.ranges[name]), 1e-6))

    def _stretched(self, m: float):
        return m if self._stretch is None else m * self._stretch

    def _quantize(self, x: tf.Tensor, name: str, signed: bool) -> tf.Tensor:
        """float32 -> qint8/quint8 with the calibrated range of ``name`` (scale only,
        zero point 0: what oneDNN's int8 convolutions take).

        With the calibrated max of ``name`` known (``max:<name>`` in the ranges), an
        image whose values exceed it stretches this range, and every range after it up
        to the next quantize, by the same factor: an image unlike the calibration ones
        is rounded more coarsely instead of clipped (clipping wrecks its masks).  An
        unsigned tensor (a ReLU's output) needs only its max, not max |x|: one pass
        over the tensor instead of two (measured: the |x| pass alone was 5% of the
        resnet_v2_50 int8 graph's time)."""
        self._stretch = None
        if f"max:{name}" in self.ranges:
            top = max(float(self.ranges[f"max:{name}"]), 1e-6)
            peak = (tf.maximum(tf.reduce_max(x), -tf.reduce_min(x)) if signed
                    else tf.reduce_max(x))
            self._stretch = tf.maximum(1.0, peak / top)
        m = self._range(name)
        return tf.raw_ops.QuantizeV2(
            input=x, min_range=-m if signed else 0.0, max_range=m,
            T=tf.qint8 if signed else tf.quint8, mode="SCALED",
            round_mode="HALF_TO_EVEN").output

    def _qconv(self, x: tf.Tensor, m, scope: str, relu: bool, stride: int = 1,
               rate: int = 1, same_explicit: bool = False,
               addend: tf.Tensor | None = None) -> tf.Tensor:
        """One int8 convolution + bias of ``x``, an int8 tensor quantized in the range
        ``m`` (a float, or a scalar tensor once stretched).  With ``relu`` its output is
        requantized to quint8 in the calibrated range of ``scope`` and feeds the next int8
        convolution directly; without, it is a float32 tensor (a residual branch, an ASPP branch)
        read exactly from the kernel's int32 accumulator, so no second rounding and no
        clipping of an output range calibrated on other images.

        The int32 output is declared with one weight scale for every channel (filter
        range +-127, the bias divided by each channel's scale) and each channel's own
        scale multiplied in afterwards: with per-channel declared ranges, oneDNN v3
        builds scale the int32 output by the largest channel's scale and v2 builds by
        each channel's, so a graph relying on either would break on the other.

        With the ``fused`` kernels a 1x1 convolution of stride 1 with a float32 output
        (conv3, the merged residual, the ASPP's 1x1 branch) runs as oneDNN's quantized
        matrix multiply instead, which writes float32 itself, per-channel scales and
        ``addend`` (the shortcut) included: one kernel where the convolution needed a
        cast, a multiply and an add after it (~10% of the resnet_v2_50 graph's time, see
        ``quantized_matmul``).  TensorFlow has that kernel from 2.17 on, all built with
        oneDNN v3, so the v2 caveat above does not reach it."""
        wq, wmax, bias = self._quantized[scope]
        signed = x.dtype == tf.qint8
        if self.fused:
            filt = tf.bitcast(self.int8_weights[scope], tf.qint8)
        if self.fused and not relu and wq.shape[:2] == (1, 1) and stride == 1:
            cin, cout = wq.shape[2:]
            rows = None if addend is None else tf.reshape(addend, [-1, cout])
            out = quantized_matmul(tf.reshape(x, [-1, cin]), -m if signed else 0.0, m,
                                   tf.reshape(filt, [cin, cout]), wmax, bias, rows)
            return tf.reshape(out, tf.concat([tf.shape(x)[:3], [cout]], 0))
        padding, explicit = "SAME", []
        if same_explicit and stride > 1:  # as _conv: zero is 0 in SCALED int8
            k = wq.shape[0]
            eff = k + (k - 1) * (rate - 1)
            beg = (eff - 1) // 2
            # the kernel pads (a separate Pad of the int8 tensor was 4% of the graph)
            padding, explicit = "VALID", [0, 0, beg, eff - 1 - beg, beg, eff - 1 - beg, 0, 0]
        conv = dict(input=x, filter=filt if self.fused else tf.constant(wq, tf.qint8),
                    min_input=-m if signed else 0.0, max_input=m,
                    strides=[1, stride, stride, 1], padding=padding,
                    dilations=[1, rate, rate, 1], padding_list=explicit)
        if relu:
            out = self._range(scope)
            requantized = dict(bias=tf.constant(bias), min_filter=tf.constant(-wmax),
                               max_filter=tf.constant(wmax), min_freezed_output=0.0,
                               max_freezed_output=out, **conv)
            if self.fused:
                return fused_quantized_conv2d(**requantized)
            return tf.raw_ops.QuantizedConv2DWithBiasAndReluAndRequantize(
                out_type=tf.quint8, **requantized).output
        wscale = (wmax / 127.0).astype(np.float32)
        raw = dict(bias=tf.constant((bias / wscale).astype(np.float32)), min_filter=-127.0,
                   max_filter=127.0, **conv)
        acc = (fused_quantized_conv2d(**raw) if self.fused else
               tf.raw_ops.QuantizedConv2DWithBias(out_type=tf.qint32, **raw).output)
        step = m / (127.0 if signed else 255.0)
        out = tf.cast(tf.bitcast(acc, tf.int32), tf.float32) * (step * tf.constant(wscale))
        return out if addend is None else addend + out

    def _unit_int8(self, x, preact, u: Unit):
        """The bottleneck in int8: the pre-activation is quantized once and feeds both
        the shortcut and conv1; conv1 -> conv2 -> conv3 stay int8; conv3 and the
        shortcut leave as float32 (see ``_qconv``), and the residual sum stays float32.
        ``preact`` is the stream itself where the norm is folded into it
        (``fold_preacts``): quantizing to quint8 clips at zero, the ReLU."""
        p = f"{u.scope}/preact"
        q = self._quantize(preact, p, signed=False)
        r = self._qconv(q, self._range(p), f"{u.scope}/conv1", True)
        r = self._qconv(r, self._range(f"{u.scope}/conv1"), f"{u.scope}/conv2", True,
                        stride=u.stride, rate=u.rate, same_explicit=True)
        if f"{u.scope}/residual" in self._quantized:  # see _merge_residuals
            out = self._qconv(tf.concat([q, r], axis=3), self._stretched(MERGED_INPUT_RANGE),
                              f"{u.scope}/residual", False)
            self._stretch = None
            return out
        if u.has_shortcut_conv:
            shortcut = self._qconv(q, self._range(p), f"{u.scope}/shortcut", False,
                                   stride=u.stride)
        else:
            shortcut = _subsample(x, u.stride)
        out = self._qconv(r, self._range(f"{u.scope}/conv2"), f"{u.scope}/conv3", False,
                          addend=shortcut)
        self._stretch = None  # a tensor of this block (and of a tf.cond branch's graph)
        return out

    def _aspp_int8(self, net, branches):
        s = "DeepLab_v3/ASPP_layer"
        q = self._quantize(net, f"{s}:input", signed=True)
        convs = [(f"{s}/conv_1x1_0", 1)] + [
            (f"{s}/conv_3x3_{i}", rate) for i, rate in enumerate(self.config.aspp_rates, start=1)]
        for scope, rate in convs:
            branches.append(self._qconv(q, self._range(f"{s}:input"), scope, False, rate=rate))
        self._stretch = None
        # The 1x1 projection of the concatenated branches stays float32: one per-tensor
        # int8 range over five branches of different scales cost more agreement than
        # any other tensor, and this convolution is ~1% of the network's work.
        return _as(self._conv_bn(tf.concat([_as(b, self.edge_dtype) for b in branches], axis=3),
                                 f"{s}/conv_1x1_output", False), tf.float32)

    def calibrate(self, images) -> dict[str, float]:
        """The int8 range of every tensor the int8 graph quantizes, from ``images`` (RGB
        arrays) run through this float32 folded model (whose weights the int8 one rounds):
        per tensor, the candidate clipping range with the least rounding error."""
        if not self.folded or self.precision != "float32":
            raise ValueError("calibrate a float32 model with folded BatchNorm")

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
        def taps(batch):
            self._taps = {}
            try:
                self._logits(batch)
                return dict(self._taps)
            finally:
                self._taps = None

        tops: dict[str, float] = {}
        errors: dict[str, np.ndarray] = {}
        for image in images:
            for name, value in taps(tf.constant(np.asarray(image, np.float32)[None])).items():
                value = value.numpy().astype(np.float64)
                tops[name] = max(tops.get(name, 0.0), float(value[0]))
                errors[name] = errors.get(name, 0.0) + value[1:]
        # Per tensor, the clipping range whose int8 rounding error (mean squared, over the
        # calibration images) is smallest: a few outliers clipped beats every other value
        # rounded coarsely.  Except the requantized outputs inside a block (conv1, conv2):
        # their range is the calibration max.  The clipping that suits the calibration
        # images clips other images' outliers there, and only the block's input range
        # stretches with the image (measured on held-out photographs: up to 0.4 points
        # of pixel agreement).
        unclipped = {f"{u.scope}/{conv}" for u in self.units for conv in ("conv1", "conv2")}
        ranges = {name: tops[name] * (1.0 if name in unclipped
                                      else CLIP_FRACTIONS[int(np.argmin(errors[name]))])
                  for name in tops}
        # and its max, which an image must exceed before its ranges stretch (_quantize),
        # and whether these are ranges of folded pre-activations (the int8 model follows)
        return ranges | {f"max:{name}": top for name, top in tops.items()} | {
            PREACTS_FOLDED: float(self.fold_preacts)}

    def logits(self, images: tf.Tensor) -> tf.Tensor:
        """Per-pixel class logits at the input resolution, float32 [N, H, W, classes].
        The backbone and ASPP run in ``precision``; the logits layer, the resize and
        everything after it in float32."""
        if self.int8:
            return self._int8_logits(images)
        return self._logits(images)

    def _logits(self, images: tf.Tensor) -> tf.Tensor:
        c = self.config
        x = tf.cast(images, tf.float32) - tf.constant(c.mean, tf.float32)
        x = tf.cast(x, self.edge_dtype)
        x = self._bias(self._conv(x, f"{c.scope}/conv1", stride=2, same_explicit=True),
                       f"{c.scope}/conv1")
        x = tf.cast(tf.nn.max_pool2d(x, 3, 2, padding="SAME"), self.compute_dtype)
        for u in self.units:
            x = self._unit(x, u)
        if self._output_scale is not None:  # the stream's last scale (fold_preact)
            x = x * tf.constant(self._output_scale, x.dtype)
        x = tf.cast(self._aspp(x), tf.float32)
        x = self._bias(self._conv(x, "DeepLab_v3/logits"), "DeepLab_v3/logits")
        return resize_bilinear(x, tf.shape(images)[1:3])

    def predict(self, images: tf.Tensor) -> tf.Tensor:
        """Class index per pixel, int64 [N, H, W]."""
        return tf.argmax(self.logits(images), axis=3)


def quantized_matmul(a: tf.Tensor, min_a, max_a, w: np.ndarray | tf.Tensor,
                     wmax: np.ndarray, bias: np.ndarray,
                     addend: tf.Tensor | None = None) -> tf.Tensor:
    """float32 ``a @ w + bias (+ addend)`` of int8 ``a`` [M, K] (quint8 in [0, max_a] or
    qint8 in +-max_a, one scale) and int8 weights ``w`` [K, N] (channel n's values are
    ``w[:, n] * wmax[n] / 127``; a qint8 tensor, e.g. a variable's, which the kernel
    reorders once and keeps: ``is_weight_const``), in one oneDNN kernel: TensorFlow's
    ``_QuantizedMatMul`` with the fusion ``BiasAdd, [Add,] Dequantize`` (an internal op,
    registered where TensorFlow is built with oneDNN, which the int8 convolutions need
    too).  The int32 products are scaled to float32 per output channel inside the kernel
    and ``addend`` summed into them: the convolution kernels can only return int32 for a
    cast, a multiply and an add to read and write again.  Against float64 arithmetic on
    the same int8 values it differs by float32 rounding alone."""
    from tensorflow.python.framework import op_def_library

    w = w if isinstance(w, tf.Tensor) else tf.constant(w, tf.qint8)
    inputs = [a, w, tf.constant(bias, tf.float32)]
    if addend is not None:
        inputs.append(addend)
    inputs += [tf.convert_to_tensor(min_a, tf.float32), tf.convert_to_tensor(max_a, tf.float32),
               tf.constant(-wmax, tf.float32), tf.constant(wmax, tf.float32)]
    op = op_def_library._apply_op_helper(
        "_QuantizedMatMul", name="QuantizedMatMul", device_inputs=[], host_inputs=inputs,
        T1=a.dtype, T2=tf.qint8, Tbias=tf.float32, U=tf.float32, Tout=tf.float32,
        Thost_outputs=[tf.float32], Tdevice_outputs=[],
        fused_ops=["BiasAdd", "Dequantize"] if addend is None else ["BiasAdd", "Add", "Dequantize"],
        input_quant_mode="SCALED", output_quant_mode="SCALED", transpose_a=False,
        transpose_b=False, is_weight_const=True, is_bias_const=True, leakyrelu_alpha=0.2)[2]
    return op.outputs[0]


def fused_quantized_conv2d(input: tf.Tensor, filter: tf.Tensor, bias: tf.Tensor,
                           min_input, max_input, min_filter, max_filter, strides, padding,
                           dilations, padding_list, min_freezed_output=None,
                           max_freezed_output=None) -> tf.Tensor:
    """``QuantizedConv2DWithBias`` (qint32 out), or with a frozen output range
    ``QuantizedConv2DWithBiasAndReluAndRequantize`` (quint8 out) as oneDNN's internal
    ``_FusedQuantizedConv2D`` (as ``_QuantizedMatMul``): the same arithmetic (resnet_v2_50
    and demo logits equal to the bit), but its filter may be any tensor (a variable's),
    which it reorders on the first call and keeps (``is_filter_const``); the public ops'
    oneDNN rewrite keeps a filter only where it is a constant."""
    from tensorflow.python.framework import op_def_library

    requantize = max_freezed_output is not None
    out_type = tf.quint8 if requantize else tf.qint32
    inputs = [input, filter, bias] + [tf.convert_to_tensor(v, tf.float32) for v in (
        min_input, max_input, min_filter, max_filter)]
    if requantize:
        inputs += [tf.convert_to_tensor(v, tf.float32)
                   for v in (min_freezed_output, max_freezed_output)]
    op = op_def_library._apply_op_helper(
        "_FusedQuantizedConv2D", name="QuantizedConv2D", device_inputs=[],
        host_inputs=inputs, Tinput=input.dtype, Tfilter=tf.qint8, Tbias=tf.float32,
        Tsummand=out_type, out_type=out_type, Thost_outputs=[out_type, tf.float32, tf.float32],
        Tdevice_outputs=[], data_format="NHWC", strides=strides,
        padding="EXPLICIT" if padding_list else padding, explicit_paddings=padding_list,
        dilations=dilations, is_filter_const=True, is_bias_const=True, alpha=0.0,
        fused_ops=["BiasAdd", "Relu", "Requantize"] if requantize else ["BiasAdd"])[2]
    return op.outputs[0]


def _as(x: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    """``x`` in ``dtype``: a float32-stored weight feeding a bfloat16 block of an int8
    model (or of the sensitivity pass's mixed model) is cast where it is used."""
    return x if x.dtype == dtype else tf.cast(x, dtype)


def _subsample(x: tf.Tensor, stride: int) -> tf.Tensor:
    """``x[:, ::stride, ::stride, :]`` (slim's subsample) as a 1x1 max pool: the same
    values, but a multi-threaded oneDNN kernel instead of a single-threaded strided slice
    (measured: 4 slices took 9% of the resnet_v2_50 int8 graph's time)."""
    return tf.nn.max_pool2d(x, 1, stride, "VALID") if stride > 1 else x


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


def choose_float_blocks(model: DeepLabV3, images, target: float,
                        reference: DeepLabV3 | None = None) -> tuple[list[str], list[dict]]:
    """The blocks an int8 export keeps in its float ``block_precision`` so that every
    image in ``images`` (the calibration images) agrees with float32 on at least
    ``target`` of its pixels.

    ``model`` is a ``mixed`` int8 model; ``reference`` the float32 model the agreement is
    measured against (needed when the float blocks are bfloat16; otherwise the
    all-float32 mixture, i.e. the folded float32 model).  Sensitivity pass, greedy:
    starting from every block in int8, each step puts back in float the one block that
    leaves the least squared logit error, until the worst image reaches ``target``.
    Returns the chosen blocks and one record per step (what the export reports)."""
    if not model.mixed:
        raise ValueError("choose_float_blocks needs a mixed int8 model")
    if reference is None and model.block_dtype != tf.float32:
        raise ValueError("a bfloat16 mixture needs a float32 reference model")
    n = len(model.blocks)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32),
                                  tf.TensorSpec([n], tf.bool)])
    def run(batch, mask):
        model._mask = mask
        try:
            return model._logits(batch)
        finally:
            model._mask = None

    batches = [tf.constant(np.asarray(im, np.float32)[None]) for im in images]
    refs = [(reference.logits(b) if reference is not None else run(b, tf.ones([n], tf.bool))
             ).numpy() for b in batches]

    def score(floats: set[int]) -> tuple[float, float]:
        mask = tf.constant([i in floats for i in range(n)])
        worst, err, norm = 1.0, 0.0, 0.0
        for b, ref in zip(batches, refs, strict=True):
            got = run(b, mask).numpy()
            worst = min(worst, float(np.mean(got.argmax(-1) == ref.argmax(-1))))
            err += float(np.sum(np.square(got - ref)))
            norm += float(np.sum(np.square(ref)))
        return worst, err / max(norm, 1e-30)

    chosen: set[int] = set()
    worst, err = score(chosen)
    steps = [{"float": [], "worst_agreement": worst, "relative_logit_error": err}]
    while worst < target and len(chosen) < n:
        # Re-ranked at every step: a block's cost can hide behind a larger one's.
        tried = {i: score(chosen | {i}) for i in range(n) if i not in chosen}
        best = min(tried, key=lambda i: (tried[i][1], -tried[i][0]))
        chosen.add(best)
        worst, err = tried[best]
        steps.append({"float": [model.blocks[j] for j in sorted(chosen)],
                      "worst_agreement": worst, "relative_logit_error": err})
    return [model.blocks[j] for j in sorted(chosen)], steps
