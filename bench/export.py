"""Export and load timings for a random-weight resnet_v2_50 DeepLab-v3 (OS16, 21 classes).

    .venv/bin/python bench/export.py [--keep DIR]

Prints the time to read the checkpoint, write the SavedModel (+warmup, +verification) and
to load it back with tf.saved_model.load, plus the first-call / steady-state ratio of the
loaded model on a 513x513 image (what warmup exists to hide).  Ratios come from one run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from tfdeploy.tfimport import quiet_import_tensorflow

tf = quiet_import_tensorflow()

from workdir import add_keep_option, work_dir  # noqa: E402

from tfdeploy.export.checkpoint import write_checkpoint  # noqa: E402
from tfdeploy.export.config import ModelConfig  # noqa: E402
from tfdeploy.export.model import random_weights  # noqa: E402
from tfdeploy.export.writer import export  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_keep_option(ap)
    args = ap.parse_args()
    work = work_dir("export", args.keep)
    cfg = ModelConfig()  # resnet_v2_50, OS16, 21 classes
    t = time.perf_counter()
    write_checkpoint(work / "ckpt", cfg, random_weights(cfg))
    print(f"random checkpoint written      {time.perf_counter() - t:7.2f} s")
    result = export(work / "ckpt", work / "models")
    for step, seconds in result.timings.items():
        print(f"export: {step:<22} {seconds:7.2f} s")
    print(f"export total                   {result.seconds:7.2f} s")
    t = time.perf_counter()
    loaded = tf.saved_model.load(result.path)
    load_s = time.perf_counter() - t
    print(f"tf.saved_model.load            {load_s:7.2f} s")
    fn = loaded.signatures["predict_images"]
    image = tf.constant(np.random.default_rng(0).uniform(0, 255, (1, 513, 513, 3)), tf.float32)
    times = []
    for _ in range(6):
        t = time.perf_counter()
        fn(images=image, height=tf.constant([513]), width=tf.constant([513]))
        times.append(time.perf_counter() - t)
    steady = float(np.median(times[1:]))
    print(f"first call / steady call (513x513): {times[0]:.2f} s / {steady:.2f} s "
          f"= {times[0] / steady:.2f}")
    size = sum(f.stat().st_size for f in Path(result.path).rglob("*") if f.is_file())
    print(f"SavedModel size                {size / 1e6:7.1f} MB")


if __name__ == "__main__":
    main()
