"""Embedded server overhead, batching throughput and warmup, on a random-weight
resnet_v2_50 DeepLab-v3 (OS16, 21 classes) at 513x513.  All ratios come from one run.

    .venv/bin/python bench/server.py [--size 513] [--requests 8] [--concurrency 8]

Goals (issue 4): gRPC p50 / in-process p50 <= 1.10; batched throughput at concurrency 8 /
best in-process batched throughput >= 0.9; first request after load / steady p50 <= 1.5
with warmup on (and what it is with warmup off).
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent import futures
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from tfdeploy.tfimport import quiet_import_tensorflow  # noqa: E402
from tfdeploy.tfs.requests import images_request  # noqa: E402

tf = quiet_import_tensorflow()

import grpc  # noqa: E402
from servers import ServerProcess  # noqa: E402
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402
from workdir import add_keep_option, work_dir  # noqa: E402

from tfdeploy.export.checkpoint import write_checkpoint  # noqa: E402
from tfdeploy.export.config import ModelConfig  # noqa: E402
from tfdeploy.export.model import random_weights  # noqa: E402
from tfdeploy.export.warmup import encode_png, probe_image  # noqa: E402
from tfdeploy.export.writer import export  # noqa: E402


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def float_request(image: np.ndarray) -> predict_pb2.PredictRequest:
    return images_request("deeplab", image)


def bytes_request(png: bytes) -> predict_pb2.PredictRequest:
    """What `tfdeploy predict` sends: the encoded image, asking for the PNG mask only."""
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "deeplab"
    req.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([png]))
    req.output_filter.append("mask_png")
    return req


def first_and_steady(base: Path, work: Path, image, n: int, *flags: str) -> tuple[float, float]:
    srv = ServerProcess("--model_name=deeplab", f"--model_base_path={base}", *flags,
                        log_dir=work)
    try:
        srv.wait_available(1)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(srv.grpc_target, options=[
                ("grpc.max_receive_message_length", -1)]))
        req = float_request(image)
        first = timed(lambda: stub.Predict(req, 600), 1)[0]
        steady = float(np.median(timed(lambda: stub.Predict(req, 600), n)))
        return first, steady
    finally:
        srv.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=513)
    ap.add_argument("--requests", type=int, default=8, help="timed requests per measurement")
    ap.add_argument("--concurrency", type=int, default=8)
    add_keep_option(ap)
    args = ap.parse_args()
    work = work_dir("server", args.keep)
    cfg = ModelConfig()
    write_checkpoint(work / "ckpt", cfg, random_weights(cfg))
    base = work / "models"
    export(work / "ckpt", base, do_verify=False)
    image = probe_image(args.size, args.size)
    png = encode_png(image)
    n, c = args.requests, args.concurrency

    loaded = tf.saved_model.load(str(base / "1"))
    fn = loaded.signatures["predict_images"]
    x = tf.constant(image[None].astype(np.float32))
    hw = tf.constant([args.size])
    fn(images=x, height=hw, width=hw)
    local_p50 = float(np.median(timed(lambda: fn(images=x, height=hw, width=hw), n)))
    enc = loaded.signatures["serving_default"]
    best_local = 0.0
    for batch in (1, 2, 4, c):
        inp = tf.constant([png] * batch)
        enc(image_bytes=inp)
        t = float(np.median(timed(lambda inp=inp: enc(image_bytes=inp), max(2, n // batch))))
        best_local = max(best_local, batch / t)
    del loaded

    first_on, grpc_p50 = first_and_steady(base, work, image, n)
    first_off, steady_off = first_and_steady(base, work, image, n, "--enable_model_warmup=false")

    params = work / "batching.config"
    params.write_text(f"max_batch_size {{ value: {c} }}\nbatch_timeout_micros {{ value: 20000 }}"
                      f"\nnum_batch_threads {{ value: 1 }}\n")
    srv = ServerProcess("--model_name=deeplab", f"--model_base_path={base}",
                        "--enable_batching", f"--batching_parameters_file={params}",
                        log_dir=work)
    try:
        srv.wait_available(1)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(srv.grpc_target))
        req = bytes_request(png)
        stub.Predict(req, 600)
        total = c * max(2, n // 2)
        with futures.ThreadPoolExecutor(c) as pool:
            t = time.perf_counter()
            list(pool.map(lambda _: stub.Predict(req, 600), range(total)))
            served = total / (time.perf_counter() - t)
    finally:
        srv.stop()

    print(f"model: random-weight resnet_v2_50 OS16, {args.size}x{args.size}, "
          f"{n} timed requests per figure")
    print(f"in-process p50 {local_p50 * 1e3:8.1f} ms | gRPC p50 {grpc_p50 * 1e3:8.1f} ms "
          f"| ratio {grpc_p50 / local_p50:.2f} (goal <= 1.10)")
    print(f"in-process best batched {best_local:6.2f} img/s | server batched at concurrency "
          f"{c} {served:6.2f} img/s | ratio {served / best_local:.2f} (goal >= 0.9)")
    print(f"warmup on : first {first_on * 1e3:8.1f} ms / steady {grpc_p50 * 1e3:8.1f} ms "
          f"= {first_on / grpc_p50:.2f} (goal <= 1.5)")
    print(f"warmup off: first {first_off * 1e3:8.1f} ms / steady {steady_off * 1e3:8.1f} ms "
          f"= {first_off / steady_off:.2f}")


if __name__ == "__main__":
    main()
