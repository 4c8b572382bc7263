"""Train the demo checkpoint (checkpoints/demo/) on synthetic scenes.

    .venv/bin/python checkpoints/train_demo.py [--steps 2000] [--out checkpoints/demo]

A small DeepLab-v3 (same code path as resnet_v2_50, fewer units and channels), trained
from scratch with batch norm in training mode; the moving statistics it accumulates are
what the exported model uses.  Writes a native checkpoint (name-based TF checkpoint +
config.json), a few MB.  Also regenerates the demo images in examples/.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

from tfdeploy.demo.scenes import CLASSES, batch, scene
from tfdeploy.export.checkpoint import write_checkpoint
from tfdeploy.export.config import ModelConfig
from tfdeploy.export.model import DeepLabV3

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
    pixel); moving statistics are updated by the model, not the optimiser."""
    trainable = [model.variables_list[i] for n, i in model._index.items()
                 if not n.endswith(("moving_mean", "moving_variance"))]

    @tf.function(jit_compile=False)
    def step(images, labels):
        model.training = True
        with tf.GradientTape() as tape:
            logits = model.logits(images)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        opt.apply_gradients(zip(tape.gradient(loss, trainable), trainable, strict=True))
        model.training = False
        return loss

    return step


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4500)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "demo")
    ap.add_argument("--examples", type=Path, default=Path(__file__).parents[1] / "examples")
    args = ap.parse_args()

    tf.random.set_seed(0)
    rng = np.random.default_rng(0)
    model = TrainableDeepLab(DEMO_CONFIG)
    schedule = tf.keras.optimizers.schedules.CosineDecay(2e-3, args.steps, alpha=0.05)
    step = train_step(model, tf.keras.optimizers.Adam(schedule))

    t0 = time.time()
    for i in range(1, args.steps + 1):
        images, labels = batch(rng, args.batch, args.size, args.size)
        loss = step(tf.constant(images, tf.float32), tf.constant(labels, tf.int32))
        if i % 100 == 0 or i == args.steps:
            val_img, val_lbl = batch(np.random.default_rng(10_000 + i), 16, 160, 160)
            pred = model.predict(val_img.astype(np.float32)).numpy()
            acc = float(np.mean(pred == val_lbl))
            ious = [np.sum((pred == c) & (val_lbl == c)) / max(1, np.sum((pred == c) |
                                                                          (val_lbl == c)))
                    for c in range(1, len(CLASSES))]
            print(f"step {i:5d}  loss {float(loss):.4f}  val pixel acc {acc:.4f}  "
                  f"shape mIoU {np.mean(ious):.3f}  {time.time() - t0:.0f}s", flush=True)

    write_checkpoint(args.out, DEMO_CONFIG, model.named_weights())
    args.examples.mkdir(parents=True, exist_ok=True)
    ex_rng = np.random.default_rng(2024)
    for k in range(4):
        image, _ = scene(ex_rng, 240, 320, max_shapes=5)
        Image.fromarray(image).save(args.examples / f"scene_{k + 1}.jpg", quality=92)
    print(f"wrote {args.out} and {args.examples}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
