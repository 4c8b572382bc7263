"""Client cost: our TF-free `tfdeploy predict` against a seed-style client that imports
TensorFlow and uses tf.make_tensor_proto.  All ratios are measured in this one run.

    .venv/bin/python bench/client.py [--images 1000]

Goals (issue 6): wall time ratio <= 0.1, peak RSS ratio <= 0.15, request bytes of the
encoded signature / the float32 signature for a 513x513 JPEG <= 0.05, client RSS growth
over a 1,000-image folder run <= 20 MB.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from servers import ServerProcess  # noqa: E402
from workdir import add_keep_option, work_dir  # noqa: E402

from tfdeploy.client.pool import connect  # noqa: E402
from tfdeploy.client.predict import Predictor, expand  # noqa: E402
from tfdeploy.demo.scenes import batch, scene  # noqa: E402
from tfdeploy.tfs.requests import encoded_image_request, predict_request  # noqa: E402

SEED_CLIENT = """
import sys, numpy as np, grpc
from PIL import Image
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
image = np.asarray(Image.open(sys.argv[2]).convert("RGB"))
h, w = image.shape[:2]
stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(sys.argv[1]))
request = predict_pb2.PredictRequest()
request.model_spec.name = "deeplab"
request.model_spec.signature_name = "predict_images"
request.inputs["images"].CopyFrom(tf.make_tensor_proto(image.astype(np.float32),
                                                       shape=[1, h, w, 3]))
request.inputs["height"].CopyFrom(tf.make_tensor_proto(h, shape=[1]))
request.inputs["width"].CopyFrom(tf.make_tensor_proto(w, shape=[1]))
result = stub.Predict(request, 60.0)
seg = np.array(result.outputs["segmentation_map"].int64_val).reshape(h, w)
Image.fromarray(seg.astype(np.uint8)).save(sys.argv[3])
"""


# ru_maxrss of a child forked from this (large) process starts at this process's size, so
# each measured command is forked from a tiny fresh interpreter instead.
_MEASURE = """import os, sys, time
t = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(time.perf_counter() - t, usage.ru_maxrss, os.waitstatus_to_exitcode(status))
"""


def run_measured(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one command."""
    out = subprocess.run([sys.executable, "-S", "-c", _MEASURE, *cmd], capture_output=True,
                         text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    wall, maxrss_kb, code = out.stdout.split()[-3:]
    if int(code) != 0:
        raise SystemExit(f"{cmd[:3]} failed")
    return float(wall), int(maxrss_kb) / 1024


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    add_keep_option(ap)
    args = ap.parse_args()
    work = work_dir("client", args.keep)
    base = work / "models"
    subprocess.run([sys.executable, "-m", "tfdeploy", "export", "-o", str(base), "--json"],
                   check=True, capture_output=True, cwd=ROOT)
    image, _ = scene(np.random.default_rng(1), 513, 513, max_shapes=5)
    jpg = work / "one.jpg"
    Image.fromarray(image).save(jpg, quality=90)
    srv = ServerProcess("--model_name=deeplab", f"--model_base_path={base}", log_dir=work)
    try:
        srv.wait_available(1)
        ours = [run_measured([sys.executable, "-m", "tfdeploy", "predict", "--server",
                              srv.grpc_target, "-o", str(work / "m1"), str(jpg)])
                for _ in range(args.repeat)]
        seed = [run_measured([sys.executable, "-c", SEED_CLIENT, srv.grpc_target, str(jpg),
                              str(work / "seed.png")]) for _ in range(args.repeat)]
        t_ours, m_ours = np.median([o[0] for o in ours]), np.median([o[1] for o in ours])
        t_seed, m_seed = np.median([s[0] for s in seed]), np.median([s[1] for s in seed])
        print(f"one 513x513 JPEG, median of {args.repeat} runs each")
        print(f"wall time: tfdeploy predict {t_ours:.2f} s / seed client {t_seed:.2f} s "
              f"= {t_ours / t_seed:.3f} (goal <= 0.1)")
        print(f"peak RSS : tfdeploy predict {m_ours:.0f} MB / seed client {m_seed:.0f} MB "
              f"= {m_ours / m_seed:.3f} (goal <= 0.15)")

        enc = encoded_image_request("deeplab", [jpg.read_bytes()]).ByteSize()
        flt = predict_request("deeplab", "predict_images", {
            "images": image[None].astype(np.float32), "height": np.array([513], np.int32),
            "width": np.array([513], np.int32)}).ByteSize()
        print(f"request bytes: serving_default {enc} / predict_images {flt} = "
              f"{enc / flt:.4f} (goal <= 0.05)")

        folder = work / "folder"
        folder.mkdir()
        imgs, _ = batch(np.random.default_rng(2), args.images, 64, 64)
        for i, im in enumerate(imgs):
            Image.fromarray(im).save(folder / f"{i:05d}.jpg", quality=90)
        jobs = expand([str(folder)])
        predictor = Predictor(connect(srv.grpc_target), output_dir=work / "m2")
        warm = 100
        for k, _ in enumerate(predictor.run(jobs, concurrency=4)):
            if k == warm - 1:
                start_rss = rss_mb()
        growth = rss_mb() - start_rss
        print(f"RSS growth from image {warm} to {args.images}: {growth:+.1f} MB "
              "(goal <= 20 MB)")
    finally:
        srv.stop()


if __name__ == "__main__":
    main()
