"""int8 with mixed precision (issue 20): which blocks the sensitivity pass keeps out of
int8 (in --block-precision: float32, or bfloat16 as export's --fallback-precision auto
picks on a CPU with native bfloat16 kernels) for a trained
checkpoint, its agreement on the held-out photographs, and what those blocks cost in
latency on the full-size network, in float32 and in bfloat16.

    .venv/bin/python bench/int8_mixed.py --checkpoint /tmp/resnet_v2_50_scenes [--rounds 5] \
        [--block-precision bfloat16]

Calibration: the demo images and scikit-image's other bundled photographs (ihc, hubble
deep field, retina, camera, motorcycle); the four photographs the agreement is judged on
(astronaut, coffee, chelsea, rocket) are never calibrated on.  Latency: a random-weight
resnet_v2_50 (OS16, 513x513) built in-process in float32, all-int8 and int8 with the
chosen blocks in float32 and in bfloat16, interleaved in the same rounds (median and
fastest round: the fastest is least disturbed by other jobs on a shared machine); the
first line names the CPU and the load average.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from tfdeploy.tfimport import quiet_import_tensorflow

# int8 runs on oneDNN's kernels, off by default on CPUs without VNNI, AVX512_BF16 or AMX
# (tfdeploy/tfs/onednn.py): on for this process (in-process rows), as the exporter does
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
tf = quiet_import_tensorflow()

from skimage import data as skdata  # noqa: E402

from tfdeploy.export.agreement import _shrink, probe_images  # noqa: E402
from tfdeploy.export.checkpoint import locate  # noqa: E402
from tfdeploy.export.config import ModelConfig  # noqa: E402
from tfdeploy.export.model import DeepLabV3, choose_float_blocks, random_weights  # noqa: E402
from tfdeploy.export.warmup import probe_image  # noqa: E402

HELD_OUT = ("astronaut", "coffee", "chelsea", "rocket")
CALIBRATION = ("immunohistochemistry", "hubble_deep_field", "retina", "camera")


def rgb(a) -> np.ndarray:
    a = np.asarray(a)
    return _shrink(np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3])


def calibration_images() -> list[np.ndarray]:
    photos = [rgb(getattr(skdata, n)()) for n in CALIBRATION]
    photos.append(rgb(skdata.stereo_motorcycle()[0]))
    return [im for _, im in probe_images()] + photos


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--target", type=float, default=0.99)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--block-precision", choices=("float32", "bfloat16"),
                    default="float32",
                    help="what the chosen blocks compute in (export --fallback-precision)")
    args = ap.parse_args()
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                if ln.startswith("model name")), "unknown CPU")
    print(f"CPU: {cpu}, {len(__import__('os').sched_getaffinity(0))} cores; load average "
          f"{__import__('os').getloadavg()[0]:.1f}", flush=True)
    source = locate(args.checkpoint)
    cfg, weights = source.config, source.load_weights()
    calib = calibration_images()
    t = time.perf_counter()
    folded = DeepLabV3(cfg, weights, fold_batch_norm=True, fold_preacts=True)
    ranges = folded.calibrate(calib)  # as the export: pre-activations folded
    bp = args.block_precision
    mixed = DeepLabV3(cfg, weights, precision="int8", fold_batch_norm=True,
                      activation_ranges=ranges, mixed=True, block_precision=bp)
    blocks, steps = choose_float_blocks(mixed, calib, args.target, folded)
    print(f"sensitivity pass ({bp} blocks) on {len(calib)} calibration images: "
          f"{time.perf_counter() - t:.0f} s; load average {__import__('os').getloadavg()[0]:.1f}")
    for s in steps:
        print(f"  {bp} {len(s['float']):2d} blocks: worst calibration image "
              f"{s['worst_agreement']:.2%}, relative logit error {s['relative_logit_error']:.2e}")
    print(f"kept in {bp}:", ", ".join(blocks) or "none")
    ref = DeepLabV3(cfg, weights)
    for label, fb in (("all-int8", []), ("mixed", blocks)):
        q = DeepLabV3(cfg, weights, precision="int8", fold_batch_norm=True,
                      activation_ranges=ranges, float_blocks=fb, block_precision=bp)
        agree = []
        for name in HELD_OUT:
            x = tf.constant(_shrink(getattr(skdata, name)())[None].astype(np.float32))
            agree.append(float(np.mean(ref.logits(x).numpy().argmax(-1)
                                       == q.logits(x).numpy().argmax(-1))))
        print(f"{label:8s} held-out photographs: " + ", ".join(
            f"{n} {a:.2%}" for n, a in zip(HELD_OUT, agree, strict=True)))

    # Latency of those choices on the full-size network (random weights: same cost).
    big = ModelConfig(num_classes=cfg.num_classes)
    rw = random_weights(big)
    rranges = DeepLabV3(big, rw, fold_batch_norm=True, fold_preacts=True).calibrate(
        [im for _, im in probe_images()][1:])
    same = [b for b in blocks if b in DeepLabV3(big, rw, fold_batch_norm=True).blocks]
    models = {
        "float32": DeepLabV3(big, rw, fold_batch_norm=True),
        "int8": DeepLabV3(big, rw, precision="int8", fold_batch_norm=True,
                          activation_ranges=rranges),
        "int8 mixed f32": DeepLabV3(big, rw, precision="int8", fold_batch_norm=True,
                                    activation_ranges=rranges, float_blocks=same),
        "int8 mixed bf16": DeepLabV3(big, rw, precision="int8", fold_batch_norm=True,
                                     activation_ranges=rranges, float_blocks=same,
                                     block_precision="bfloat16"),
        "bfloat16": DeepLabV3(big, rw, precision="bfloat16", fold_batch_norm=True)}
    x = tf.constant(probe_image(513, 513)[None].astype(np.float32))
    fns = {k: tf.function(m.logits) for k, m in models.items()}
    for f in fns.values():
        f(x).numpy()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(args.rounds):
        for k, f in fns.items():
            t = time.perf_counter()
            f(x).numpy()
            times[k].append(time.perf_counter() - t)
    f32 = float(np.median(times["float32"]))
    f32min = float(np.min(times["float32"]))
    print(f"latency, resnet_v2_50 OS16 513x513, {args.rounds} interleaved rounds "
          f"(blocks out of int8: {len(same)}); load average "
          f"{__import__('os').getloadavg()[0]:.1f}:")
    for k, v in times.items():
        print(f"  {k:16s} median {np.median(v) * 1e3:7.1f} ms ({np.median(v) / f32:.2f}x float32)"
              f", fastest {np.min(v) * 1e3:7.1f} ms ({np.min(v) / f32min:.2f}x)")


if __name__ == "__main__":
    main()
