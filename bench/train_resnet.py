"""Briefly train a full-size resnet_v2_50 DeepLab-v3 (OS16) on the demo's synthetic scenes,
so reduced-precision agreement can be measured on a resnet_v2_50 whose logits mean
something (a random-weight network's near-tied logits flip under any rounding).

    .venv/bin/python bench/train_resnet.py [--steps 300] [--out /tmp/resnet_v2_50_scenes]
    .venv/bin/python bench/precision.py --checkpoint /tmp/resnet_v2_50_scenes

Same training loop as the demo checkpoint (checkpoints/train_demo.py: batch norm in
training mode, Adam, cosine decay), 5 classes; about 3 s per step of 8 128x128 scenes on
2 cores.  Not a good segmenter after a few hundred steps, but a confident one.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "checkpoints"))

from tfdeploy.tfimport import quiet_import_tensorflow  # noqa: E402

# atrous convolutions' gradients need oneDNN on every CPU: see checkpoints/train_demo.py
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
tf = quiet_import_tensorflow()

from train_demo import TrainableDeepLab, train_step  # noqa: E402

from tfdeploy.demo.scenes import CLASSES, batch  # noqa: E402
from tfdeploy.export.checkpoint import write_checkpoint  # noqa: E402
from tfdeploy.export.config import ModelConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--out", type=Path, default=Path("/tmp/resnet_v2_50_scenes"))
    args = ap.parse_args()
    cfg = ModelConfig(num_classes=len(CLASSES))  # resnet_v2_50, OS16
    tf.random.set_seed(0)
    rng = np.random.default_rng(0)
    model = TrainableDeepLab(cfg)
    step = train_step(model, tf.keras.optimizers.Adam(
        tf.keras.optimizers.schedules.CosineDecay(1e-3, args.steps, alpha=0.05)))

    started = time.time()
    for i in range(1, args.steps + 1):
        images, labels = batch(rng, args.batch, args.size, args.size)
        loss = step(tf.constant(images, tf.float32), tf.constant(labels, tf.int32),
                    tf.ones(labels.shape))
        if i % 50 == 0 or i == args.steps:
            val_img, val_lbl = batch(np.random.default_rng(10_000), 8, 160, 160)
            acc = float(np.mean(model.predict(val_img.astype(np.float32)).numpy() == val_lbl))
            print(f"step {i:4d}  loss {float(loss):.3f}  val pixel acc {acc:.3f}  "
                  f"{time.time() - started:.0f}s", flush=True)
    write_checkpoint(args.out, cfg, model.named_weights())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
