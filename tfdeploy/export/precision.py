"""Serving precision: which dtypes an export can compute in, whether this CPU runs them
fast, and BatchNorm folding (exact algebra done once at export instead of per request).

No TensorFlow at import time: the CLI validates ``--precision`` and ``inspect`` reads the
recorded precision without paying for a TF import.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from tfdeploy.errors import UserError
from tfdeploy.export.config import FUSED_INT8_TENSORFLOW, PRECISIONS

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
_SERVED_BY = ("served by tfdeploy-model-server and TensorFlow{since} on x86 Linux (oneDNN on, "
              "i.e. TF_ENABLE_ONEDNN_OPTS not 0) and by tensorflow_model_server{since} built "
              "with --config=mkl (the tensorflow/serving:<version>-mkl images); the official "
              "tensorflow/serving:<version> and -gpu images are built without them and cannot "
              "run this version")
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


def parse_cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags every CPU in a ``/proc/cpuinfo`` text has (x86 ``flags`` lines,
    ARM ``Features`` lines).  A flag only some cores report does not count: TF schedules
    on all of them."""
    sets = [set(m.group(1).split())
            for m in re.finditer(r"^(?:flags|Features)\s*:\s*(.*)$", cpuinfo, re.M)]
    return frozenset(set.intersection(*sets)) if sets else frozenset()


def cpu_flags(path: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """This machine's CPU flags; empty where there is no ``/proc/cpuinfo`` (not Linux)."""
    try:
        return parse_cpu_flags(Path(path).read_text(errors="replace"))
    except OSError:
        return frozenset()


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


# -- int8 ----------------------------------------------------------------------------------
def float_convs(config) -> frozenset[str]:
    """Convolutions an int8 export keeps in float32: the first (3 input channels, raw
    pixel values: little compute, much error), the image-level pooling branch (one pixel),
    the ASPP's 1x1 projection of its concatenated branches (one per-tensor int8 range over
    five branches of different scales cost more agreement than any other tensor; ~1% of
    the work) and the logits (compared across precisions; a few channels)."""
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
    how = f"{ratio:.1f}x slower than" if ratio > 1 else f"only {1 / ratio:.1f}x faster than"
    article = "an" if precision == "int8" else "a"
    return (f"this CPU has no {' or '.join(f.upper() for f in FAST_CPU_FLAGS[precision])}: "
            f"{article} {precision} 3x3 convolution measured {reduced * 1e3:.3g} ms here, {how} "
            f"float32 ({f32 * 1e3:.3g} ms); the {precision} export may serve slower than "
            f"float32 on this machine (it targets CPUs/GPUs that have them)")
