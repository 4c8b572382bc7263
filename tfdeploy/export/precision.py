"""Serving precision: which dtypes an export can compute in, whether this CPU runs them
fast, and BatchNorm folding (exact algebra done once at export instead of per request).

No TensorFlow at import time: the CLI validates ``--precision`` and ``inspect`` reads the
recorded precision without paying for a TF import.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np

from tfdeploy.errors import UserError
from tfdeploy.export.config import FUSED_INT8_TENSORFLOW, PRECISIONS
from tfdeploy.tfs.onednn import cpu_flags, parse_cpu_flags  # noqa: F401  (this module's API too)

#: CPU feature flags (``/proc/cpuinfo``) that give a reduced precision native convolution
#: kernels.  Without them oneDNN emulates or falls back, and the "fast" dtype is slower.
FAST_CPU_FLAGS: dict[str, tuple[str, ...]] = {
    "bfloat16": ("avx512_bf16", "amx_bf16"),
    "float16": ("avx512_fp16", "amx_fp16"),
    "int8": ("avx512_vnni", "avx_vnni", "amx_int8"),
}

#: Which servers run an int8 export, per kernel set: oneDNN's int8 kernels are compiled
#: only into TensorFlow built with oneDNN (``--config=mkl``).  TF Serving's
#: docker/Dockerfile.mkl builds tensorflow_model_server that way; its default release
#: build (the plain CPU and GPU images) does not.
_SERVED_BY = ("served by tfdeploy-model-server (which turns oneDNN on when it finds an int8 "
              "version) and TensorFlow{since} on x86 Linux with oneDNN on (its default only on "
              "CPUs with AVX512_VNNI, AVX512_BF16, AVX_VNNI or AMX; elsewhere "
              "TF_ENABLE_ONEDNN_OPTS=1), and by tensorflow_model_server{since} built with "
              "--config=mkl (the tensorflow/serving:<version>-mkl images, oneDNN on whatever "
              "the CPU); the official tensorflow/serving:<version> and -gpu images are built "
              "without them and cannot run this version")
INT8_SERVERS = {
    "fused": "int8 exports run on TensorFlow's oneDNN int8 kernels: "
             + _SERVED_BY.format(since=f" {FUSED_INT8_TENSORFLOW} or later")
             + f" (for TensorFlow before {FUSED_INT8_TENSORFLOW}: --int8-kernels portable)",
    "portable": "int8 exports run on TensorFlow's oneDNN int8 kernels: "
                + _SERVED_BY.format(since=""),
}


def check_precision(precision: str) -> str:
    """``precision`` if tfdeploy can export it; UserError otherwise."""
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
    return precision


def cpu_runs_fast(precision: str, flags: frozenset[str]) -> bool:
    """True when the CPU has native kernels for ``precision`` (float32 always does)."""
    needs = FAST_CPU_FLAGS.get(precision)
    return needs is None or any(f in flags for f in needs)


# -- BatchNorm folding -------------------------------------------------------------------
def fold_batch_norm(weights: Mapping[str, np.ndarray], epsilon: float) -> dict[str, np.ndarray]:
    """Fold every convolution's BatchNorm into the convolution.

    ``BN(conv(x, w)) = conv(x, w * s) + (beta - mean * s)`` with ``s = gamma /
    sqrt(var + eps)`` per output channel, so ``<conv>/BatchNorm/*`` becomes
    ``<conv>/weights`` (rescaled) and ``<conv>/biases``: one fused conv+bias(+relu) kernel
    instead of a convolution and two full-size elementwise passes.  Done in float64 and
    rounded once.  A pre-activation norm (``<unit>/preact``) follows a residual sum, not a
    convolution, so it cannot be folded and keeps its statistics (the model runs it as
    one fused batch-norm kernel).
    """
    out = {n: v for n, v in weights.items() if "/BatchNorm/" not in n}
    for name in weights:
        if not name.endswith("/BatchNorm/gamma"):
            continue
        conv = name[: -len("BatchNorm/gamma")]
        gamma, beta, mean, var = (np.asarray(weights[f"{conv}BatchNorm/{v}"], np.float64)
                                  for v in ("gamma", "beta", "moving_mean", "moving_variance"))
        scale = gamma / np.sqrt(var + epsilon)
        out[conv + "weights"] = (np.asarray(weights[conv + "weights"], np.float64)
                                 * scale).astype(np.float32)
        out[conv + "biases"] = (beta - mean * scale).astype(np.float32)
    return out


def fold_preact(weights: Mapping[str, np.ndarray], units, root: str,
                epsilon: float) -> tuple[dict[str, np.ndarray], frozenset[str], np.ndarray | None]:
    """Fold the pre-activation norms into the residual stream and the convolutions around
    it, so that a unit's pre-activation is a bare ``relu`` of the stream (which int8's
    unsigned quantization does by itself: one pass over the stream instead of three).

    ``preact = relu(a*x + b)`` per channel, with ``a > 0``, equals ``(a/c) * relu(c*x +
    c*b/a)`` for any ``c > 0``.  The stream is stored as ``c*x + d`` instead of ``x``: the
    shift ``d = c*b/a`` of the unit about to read it goes into the bias of the convolution
    that wrote it (each unit's conv3 adds the next unit's shift and removes its own), the
    scale ``c`` into that convolution's weights, and ``a/c`` into the input channels of the
    unit's conv1 and shortcut (1x1, so no padding sees the shift).  An identity shortcut
    carries the stream unchanged, so ``c`` is one vector for the units between two
    shortcut convolutions (a group): the geometric mean of their ``a``.  A group of one
    unit is exact in int8 too (``c = a``); in a longer one, each unit's 8-bit grid on its
    pre-activation is no longer uniform across channels but scaled by ``c/a`` (measured on
    the demo checkpoint: within 0.6-1.8, 1.2-1.4x from the 5th to the 95th percentile).

    ``weights`` are BatchNorm-folded (``fold_batch_norm``); ``units`` the layout's units in
    order and ``root`` the scope of the first convolution, which writes the first group
    (through a max pool, which a positive scale and a shift pass through).  A group with
    a non-positive ``a`` keeps its norms.  Returns the weights, the units whose
    pre-activation is folded, and the per-channel factor the last unit's output needs to be
    the backbone's output again (None when it already is)."""
    w = {n: np.asarray(v, np.float64) for n, v in weights.items()}

    def affine(scope: str):
        p = f"{scope}/preact"
        a = w[f"{p}/gamma"] / np.sqrt(w[f"{p}/moving_variance"] + epsilon)
        return a, w[f"{p}/beta"] - w[f"{p}/moving_mean"] * a

    groups: list[list] = [[]]
    for u in units:
        groups[-1].append(u)
        if u.has_shortcut_conv:
            groups.append([])
    # How each unit finds its input stream: scale c and shift d (identity where unfolded).
    entry: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    folded: set[str] = set()
    for group in groups:
        if not group:
            continue
        a, b = zip(*(affine(u.scope) for u in group), strict=True)
        if not all(np.all(np.isfinite(x)) and np.all(x > 0) for x in a):
            entry |= {u.scope: (np.ones_like(a[0]), np.zeros_like(a[0])) for u in group}
            continue
        c = np.exp(np.mean(np.log(np.stack(a)), axis=0))
        for u, ak, bk in zip(group, a, b, strict=True):
            entry[u.scope] = (c, c * bk / ak)
            folded.add(u.scope)
            for conv in ("conv1", "shortcut"):  # [1, 1, in, out]: scale the inputs
                if (name := f"{u.scope}/{conv}/weights") in w:
                    w[name] = w[name] * (ak / c)[:, None]
            for stat in ("gamma", "beta", "moving_mean", "moving_variance"):
                del w[f"{u.scope}/preact/{stat}"]

    def write(scope: str, c: np.ndarray, d: np.ndarray, shift: np.ndarray | float = 0.0) -> None:
        """The convolution ``scope`` writes its output as ``c*y + d - shift``."""
        w[f"{scope}/weights"] = w[f"{scope}/weights"] * c
        w[f"{scope}/biases"] = w[f"{scope}/biases"] * c + d - shift

    write(root, *entry[units[0].scope])
    out_scale = None
    for i, u in enumerate(units):
        c, d = entry[u.scope]
        if i + 1 < len(units):
            nc, nd = entry[units[i + 1].scope]
        else:  # the backbone's output: unshifted, in the last group's scale if it must be
            nc = np.ones(u.depth) if u.has_shortcut_conv else c
            nd = np.zeros(u.depth)
            out_scale = None if np.all(nc == 1.0) else 1.0 / nc
        if u.has_shortcut_conv:  # out = shortcut + conv3: any scale and shift
            write(f"{u.scope}/shortcut", nc, 0.0)
            write(f"{u.scope}/conv3", nc, nd)
        else:  # out = stream + conv3: the stream's scale, the next unit's shift
            write(f"{u.scope}/conv3", c, nd, d)
    out = {n: v.astype(np.float32) for n, v in w.items()}
    return out, frozenset(folded), None if out_scale is None else out_scale.astype(np.float32)


# -- int8 ----------------------------------------------------------------------------------
def float_convs(config) -> frozenset[str]:
    """Convolutions an int8 export keeps out of int8: the first (3 input channels, raw
    pixel values: little compute, much error), the image-level pooling branch (one pixel),
    the ASPP's 1x1 projection of its concatenated branches (one per-tensor int8 range over
    five branches of different scales cost more agreement than any other tensor; ~1% of
    the work) and the logits (compared across precisions; a few channels).  The first and
    the projection compute in the export's fallback precision (bfloat16 where the CPU
    has its kernels), the other two in float32 (see ``DeepLabV3.edge_dtype``)."""
    return frozenset({f"{config.scope}/conv1", "DeepLab_v3/logits",
                      "DeepLab_v3/ASPP_layer/image_level_conv_1x1",
                      "DeepLab_v3/ASPP_layer/conv_1x1_output"})


def quantize_weights(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel int8 weights: ``w ~ q * max|w_c| / 127``.  Returns
    the int8 weights and each channel's max |w| (the kernels' min/max filter ranges)."""
    w = np.asarray(weights, np.float64)
    wmax = np.abs(w).reshape(-1, w.shape[-1]).max(axis=0)
    wmax = np.where(wmax > 0, wmax, 1.0)
    q = np.clip(np.round(w / wmax * 127.0), -127, 127).astype(np.int8)
    return q, wmax.astype(np.float32)


# -- measured speed -----------------------------------------------------------------------
def measure_conv_speed(precision: str, size: int = 33, channels: int = 256,
                       repeats: int = 5) -> tuple[float, float]:
    """Median seconds of one 3x3 convolution + bias + ReLU (a DeepLab ASPP-sized layer)
    in float32 and in ``precision`` on this machine: what the warning for a CPU without
    native kernels quotes, measured rather than assumed.  int8 is the oneDNN kernel an
    int8 export runs (quint8 in and out, per-channel int8 weights)."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x32 = tf.constant(np.abs(rng.normal(size=(1, size, size, channels))), tf.float32)
    w = rng.normal(size=(3, 3, channels, channels)) * 0.05
    w32 = tf.constant(w, tf.float32)
    b32 = tf.constant(np.zeros(channels), tf.float32)

    def timed(layer, x) -> float:
        layer(x).numpy()  # trace and let oneDNN pick its kernel
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            layer(x).numpy()
            times.append(time.perf_counter() - t)
        return float(np.median(times))

    def float_layer(dtype: tf.DType):
        wd, bd = tf.cast(w32, dtype), tf.cast(b32, dtype)
        return tf.function(lambda x: tf.nn.relu(tf.nn.bias_add(
            tf.nn.conv2d(x, wd, 1, "SAME"), bd)))

    f32 = timed(float_layer(tf.float32), x32)
    if precision != "int8":
        return f32, timed(float_layer(tf.as_dtype(precision)), tf.cast(x32, precision))
    wq, wmax = quantize_weights(w)
    xmax = float(np.max(x32.numpy()))
    xq = tf.raw_ops.QuantizeV2(input=x32, min_range=0.0, max_range=xmax, T=tf.quint8,
                               mode="SCALED").output

    @tf.function
    def int8_layer(x):
        return tf.raw_ops.QuantizedConv2DWithBiasAndReluAndRequantize(
            input=x, filter=tf.constant(wq, tf.qint8), bias=b32, min_input=0.0,
            max_input=xmax, min_filter=tf.constant(-wmax), max_filter=tf.constant(wmax),
            min_freezed_output=0.0, max_freezed_output=xmax, strides=[1, 1, 1, 1],
            padding="SAME", out_type=tf.quint8).output

    return f32, timed(int8_layer, xq)


def speed_warning(precision: str, flags: frozenset[str], has_gpu: bool = False,
                  measure=measure_conv_speed) -> str | None:
    """A warning when this CPU has no native kernels for ``precision`` (and, for float16,
    no GPU would run it instead), quoting the measured float32 and reduced-precision
    convolution times; None when the precision runs natively here."""
    if cpu_runs_fast(precision, flags) or (precision == "float16" and has_gpu):
        return None
    f32, reduced = measure(precision)
    ratio = reduced / f32
    article = "an" if precision == "int8" else "a"
    measured = f"{article} {precision} 3x3 convolution measured {reduced * 1e3:.3g} ms here"
    if ratio > 1:
        verdict = (f"{ratio:.1f}x slower than float32 ({f32 * 1e3:.3g} ms); the {precision} "
                   "export may serve slower than float32 on this machine")
    else:
        verdict = (f"only {1 / ratio:.1f}x faster than float32 ({f32 * 1e3:.3g} ms), short of "
                   f"what the {precision} export gains on CPUs with them")
    if precision == "int8":
        # measured on an AVX2-only AMD EPYC: full-range 8-bit weights and activations off by
        # up to ~30 in a 96-deep dot product of ~100 (tests/test_precision.py)
        verdict += ("; without VNNI, oneDNN adds pairs of int8 products in 16 bits, which "
                    "saturate where large weights meet large activations: the agreement "
                    "reported below was measured on these kernels, and a server on a CPU "
                    "without VNNI may compute differently from one with it")
    return (f"this CPU has no {' or '.join(f.upper() for f in FAST_CPU_FLAGS[precision])}: "
            f"{measured}, {verdict} (it targets CPUs/GPUs that have them)")
