"""Train the demo checkpoint (checkpoints/demo/) on synthetic scenes.

    .venv/bin/python checkpoints/train_demo.py [--steps N] [--init CHECKPOINT] [--out DIR]

A small DeepLab-v3 (same code path as resnet_v2_50, fewer units and channels), trained
with batch norm in training mode; the moving statistics it accumulates are what the
exported model uses.  Writes a native checkpoint (name-based TF checkpoint +
config.json), a few MB, and a snapshot next to it (``DIR.partial``) at every
evaluation, so a stopped run keeps its progress.  Also regenerates the demo images in
examples/ (the same images while ``scenes.py`` draws the same scenes).

Scenes are drawn at random scales (``--ref``), so the model segments shapes of the demo
images' size and smaller; pixels on class boundaries can weigh more in the loss
(``--edge-weight``), since that is where the masks' errors sit.  ``--init`` continues from a
checkpoint (``--output-stride`` may differ: the weights are the same).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import queue
import sys
import threading
import time
from pathlib import Path

import numpy as np

# The gradient of an atrous convolution has CPU kernels only in oneDNN ("Current CPU
# implementations do not yet support dilation rates larger than 1"), which TensorFlow
# leaves off on CPUs without VNNI, AVX512_BF16 or AMX (tfdeploy/tfs/onednn.py).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
import tensorflow as tf  # noqa: E402
from PIL import Image

from tfdeploy.demo.scenes import CLASSES, batch, class_iou, scene
from tfdeploy.errors import UserError
from tfdeploy.export.checkpoint import locate, read_weights, write_checkpoint
from tfdeploy.export.config import ModelConfig
from tfdeploy.export.layout import variable_shapes
from tfdeploy.export.model import DeepLabV3, initial_weights

DEMO_CONFIG = ModelConfig(
    num_classes=len(CLASSES), backbone="demo_resnet_v2", units=(1, 2, 2, 1),
    base_depths=(16, 32, 64, 96), root_depth=16, aspp_depth=96, output_stride=8,
    multi_grid=(1,),
)


class TrainableDeepLab(DeepLabV3):
    """Batch norm with batch statistics, updating the moving averages (momentum 0.99)."""

    training = False

    def _bn(self, x, scope, relu):
        if not self.training:
            return super()._bn(x, scope, relu)
        p = f"{scope}/" if scope.endswith("/preact") else f"{scope}/BatchNorm/"
        mean, var = tf.nn.moments(x, [0, 1, 2])
        for name, value in (("moving_mean", mean), ("moving_variance", var)):
            v = self.weight(p + name)
            v.assign(0.99 * v + 0.01 * tf.stop_gradient(value))
        y = tf.nn.batch_normalization(x, mean, var, self.weight(p + "beta"),
                                      self.weight(p + "gamma"), self.config.batch_norm_epsilon)
        return tf.nn.relu(y) if relu else y


def train_step(model: TrainableDeepLab, opt):
    """One optimiser step on a batch (batch norm in training mode, cross-entropy on every
    pixel, weighted per pixel); moving statistics are updated by the model, not the
    optimiser."""
    trainable = [model.variables_list[i] for n, i in model._index.items()
                 if not n.endswith(("moving_mean", "moving_variance"))]

    @tf.function(jit_compile=False)
    def step(images, labels, weights):
        model.training = True
        with tf.GradientTape() as tape:
            logits = model.logits(images)
            loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
            loss = tf.reduce_sum(loss * weights) / tf.reduce_sum(weights)
        opt.apply_gradients(zip(tape.gradient(loss, trainable), trainable, strict=True))
        model.training = False
        return loss

    return step


def edge_weights(labels: np.ndarray, weight: float) -> np.ndarray:
    """1 per pixel, ``weight`` within a pixel of a class boundary: the masks' errors sit
    on boundaries (three quarters of them in the 2-pixel band), so spend the gradient
    there."""
    edge = np.zeros(labels.shape, bool)
    for axis in (1, 2):
        diff = np.diff(labels, axis=axis) != 0
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        edge[tuple(lo)] |= diff
        edge[tuple(hi)] |= diff
    return np.where(edge, np.float32(weight), np.float32(1.0))


def grown_weights(start: dict[str, np.ndarray], config: ModelConfig) -> dict[str, np.ndarray]:
    """``start``'s weights for a ``config`` with as many or more units per block: units
    the start lacks begin as the identity (their last convolution zero; pre-activation
    units add their residual to the input), so the grown network computes what the
    trained one did and training goes on from there, not from scratch."""
    shapes = variable_shapes(config)
    dropped = sorted(set(start) - set(shapes))
    if dropped:
        raise UserError(f"{len(dropped)} of its weights have no place in this model (fewer "
                        f"units or another layout?), e.g. {dropped[0]}")
    weights = initial_weights(shapes)
    for name, shape in shapes.items():
        if name in start:
            if tuple(start[name].shape) != tuple(shape):
                raise UserError(f"{name} is {start[name].shape}, this model needs {shape}")
            weights[name] = start[name]
        elif "/conv3/" in name:
            weights[name] = np.zeros(shape, np.float32)
    return weights


def scene_batches(seed: int, n: int, size: tuple[int, int], ref: tuple[int, int],
                  max_shapes: int, edge_weight: float, depth: int = 6) -> queue.Queue:
    """Batches of ``n`` scenes of ``size`` (height, width) whose shapes are sized as in a
    scene with a shorter side drawn from ``ref``, made on a background thread so the next batch is
    ready when the optimiser is (drawing costs a third of a step on two cores)."""
    out: queue.Queue = queue.Queue(maxsize=depth)

    def produce() -> None:
        rng = np.random.default_rng(seed)
        while True:
            pairs = [scene(rng, *size, max_shapes, radius_ref=rng.uniform(*ref))
                     for _ in range(n)]
            labels = np.stack([p[1] for p in pairs])
            out.put((np.stack([p[0] for p in pairs]), labels, edge_weights(labels, edge_weight)))

    threading.Thread(target=produce, daemon=True).start()
    return out


def evaluate(model: DeepLabV3, seed: int = 123, n: int = 8, height: int = 240,
             width: int = 320) -> tuple[float, dict[str, float]]:
    """Pixel accuracy and per-shape-class IoU on fresh scenes of the demo images' size."""
    images, labels = batch(np.random.default_rng(seed), n, height, width, max_shapes=5)
    pred = np.concatenate([model.predict(tf.constant(images[i:i + 4], tf.float32)).numpy()
                           for i in range(0, n, 4)])
    return float(np.mean(pred == labels)), class_iou(pred, labels)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4500)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=160, help="training scene height, pixels")
    ap.add_argument("--width", type=int, help="training scene width [default: --size]")
    ap.add_argument("--ref", type=int, nargs=2, default=(160, 320), metavar=("MIN", "MAX"),
                    help="shapes are sized as in scenes whose shorter side is in this range")
    ap.add_argument("--max-shapes", type=int, default=5)
    ap.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (cosine decay)")
    ap.add_argument("--output-stride", type=int, default=DEMO_CONFIG.output_stride)
    ap.add_argument("--init", type=Path, help="start from this checkpoint's weights")
    ap.add_argument("--units", type=int, nargs=4, default=DEMO_CONFIG.units,
                    help="units per block; more than --init has grows it (new units start "
                         "as the identity)")
    ap.add_argument("--multi-grid", type=int, nargs="+", default=None,
                    help="block4 rate multipliers, one per block4 unit [default: 1, 2, 4, ...]")
    ap.add_argument("--edge-weight", type=float, default=1.0,
                    help="loss weight of pixels on a class boundary (others: 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "demo")
    ap.add_argument("--examples", type=Path, default=Path(__file__).parents[1] / "examples")
    args = ap.parse_args()

    units = tuple(args.units)
    config = dataclasses.replace(
        DEMO_CONFIG, output_stride=args.output_stride, units=units,
        multi_grid=tuple(args.multi_grid or [2 ** i for i in range(units[3])]),
        # the same receptive field in pixels at every output stride
        aspp_rates=tuple(r * 8 // args.output_stride for r in DEMO_CONFIG.aspp_rates))
    weights = None
    if args.init:
        try:
            start = locate(args.init)
            weights = grown_weights(read_weights(start.prefix, start.config), config)
        except UserError as exc:
            ap.error(f"--init: {exc}")
    tf.random.set_seed(args.seed)
    model = TrainableDeepLab(config, weights)
    schedule = tf.keras.optimizers.schedules.CosineDecay(args.lr, args.steps, alpha=0.05)
    step = train_step(model, tf.keras.optimizers.Adam(schedule))
    size = (args.size, args.width or args.size)
    batches = scene_batches(args.seed, args.batch, size, args.ref, args.max_shapes,
                            args.edge_weight)

    t0 = time.time()
    for i in range(1, args.steps + 1):
        images, labels, weights = batches.get()
        loss = step(tf.constant(images, tf.float32), tf.constant(labels, tf.int32),
                    tf.constant(weights))
        if i % args.eval_every == 0 or i == args.steps:
            acc, ious = evaluate(model)
            print(f"step {i:5d}  loss {float(loss):.4f}  240x320 pixel acc {acc:.4f}  IoU "
                  + " ".join(f"{c} {v:.3f}" for c, v in ious.items())
                  + f"  {time.time() - t0:.0f}s", flush=True)
            # a snapshot next to the output, so a stopped run keeps its progress
            write_checkpoint(args.out.with_name(args.out.name + ".partial"), config,
                             model.named_weights())

    write_checkpoint(args.out, config, model.named_weights())
    args.examples.mkdir(parents=True, exist_ok=True)
    ex_rng = np.random.default_rng(2024)
    for k in range(4):
        image, _ = scene(ex_rng, 240, 320, max_shapes=5)
        Image.fromarray(image).save(args.examples / f"scene_{k + 1}.jpg", quality=92)
    print(f"wrote {args.out} and {args.examples}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
