"""Peak memory of a tiled export: one 6000x4000 image against one batch of tiles.

    .venv/bin/python bench/tiling.py [--model demo|resnet50] [--tile 513] [--overlap 64]
                                     [--batch 4] [--size 6000x4000]

Exports the model (the bundled demo, or a random-weight resnet_v2_50 OS16 with 21
classes) with ``--tile``, serves it with a fresh ``tfdeploy-model-server`` on 127.0.0.1
and sends, over gRPC as ``tfdeploy predict`` does (``image_bytes`` in, ``mask_png`` out):

1. one request of ``--batch`` tile-sized JPEGs: what one batch of tiles costs (the
   images fit a tile, so they run as one batch, untiled);
2. one request of a single ``--size`` JPEG, which the graph tiles.

Before each request the server's peak RSS is reset (``/proc/PID/clear_refs``); after it
``VmHWM`` is the peak.  Printed: the CPU, each request's seconds and peak RSS above the
idle server, the ratio of the two peaks, and that the mask came back at full size.  The
whole image untiled would cost about 111 MB + 267 B x pixels (demo; bench/pixels.py).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from pixels import PeakSampler, cpu_name, reset_peak, rss  # noqa: E402
from servers import ServerProcess  # noqa: E402
from workdir import add_keep_option, work_dir  # noqa: E402

MB = 1 << 20


def photo(height: int, width: int) -> bytes:
    """A large JPEG with structure (shapes on gradients), made without holding floats."""
    from PIL import Image, ImageDraw

    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    img = np.empty((height, width, 3), np.uint8)
    img[..., 0] = (x * 0.8 + 20).astype(np.uint8)
    img[..., 1] = (y * 0.7 + 30).astype(np.uint8)
    img[..., 2] = 120
    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    rng = np.random.default_rng(0)
    for _ in range(60):
        cx, cy = rng.integers(0, width), rng.integers(0, height)
        r = int(rng.integers(height // 40, height // 8))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        else:
            draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def export_model(work: Path, model: str, tile: int, overlap: int, batch: int) -> Path:
    from tfdeploy.export.writer import export

    base = work / "model"
    source = None
    if model == "resnet50":
        from tfdeploy.export.checkpoint import write_checkpoint
        from tfdeploy.export.config import ModelConfig
        from tfdeploy.export.model import random_weights

        cfg = ModelConfig()  # resnet_v2_50, output stride 16, 21 classes
        source = work / "ckpt"
        write_checkpoint(source, cfg, random_weights(cfg))
    elif model != "demo":
        raise SystemExit(f"unknown model {model!r} (demo, resnet50)")
    export(source, base, do_verify=False, tile=tile, tile_overlap=overlap, tile_batch=batch)
    return base


def request(images: list[bytes]):
    from tensorflow_serving.apis import predict_pb2

    from tfdeploy.tfs.tensors import to_proto

    req = predict_pb2.PredictRequest()
    req.model_spec.name = "deeplab"
    req.inputs["image_bytes"].CopyFrom(to_proto(np.array(images, dtype=object)))
    req.output_filter.append("mask_png")
    return req


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--tile", type=int, default=513)
    ap.add_argument("--overlap", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", default="6000x4000", help="WIDTHxHEIGHT of the large image")
    add_keep_option(ap)
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    print(f"CPU: {cpu_name()} ({os.cpu_count()} cores)", flush=True)
    work = work_dir("tiling", args.keep)
    base = export_model(work, args.model, args.tile, args.overlap, args.batch)
    print(f"{args.model} export, --tile {args.tile} --tile-overlap {args.overlap} "
          f"--tile-batch {args.batch}", flush=True)

    import grpc
    from PIL import Image
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    srv = ServerProcess("--model_name=deeplab", f"--model_base_path={base}", log_dir=work)
    try:
        srv.wait_available(1)
        pid = srv.proc.pid
        stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(
            srv.grpc_target, options=[("grpc.max_receive_message_length", -1),
                                      ("grpc.max_send_message_length", -1)]))
        time.sleep(1)
        idle = rss(pid)
        tiles = [photo(args.tile, args.tile) for _ in range(args.batch)]
        large = photo(height, width)
        results = {}
        for name, images in (("one tile batch", tiles), (f"one {width}x{height} image", [large])):
            req = request(images)
            reset_peak(pid)
            sampler = PeakSampler(pid)
            start = time.perf_counter()
            out = stub.Predict(req, 1800)
            seconds = time.perf_counter() - start
            peak = max(sampler.stop(), rss(pid, "VmHWM")) - idle
            mask = Image.open(io.BytesIO(out.outputs["mask_png"].string_val[-1]))
            results[name] = peak
            print(f"  {name:<24} {seconds:7.1f} s   peak RSS above idle {peak / MB:7.0f} MB"
                  f"   mask {mask.size[0]}x{mask.size[1]}", flush=True)
            time.sleep(1)
        batch_peak, large_peak = results.values()
        print(f"idle server {idle / MB:.0f} MB; tiled {width}x{height} image / one tile batch: "
              f"{large_peak / batch_peak:.2f}x peak RSS")
    finally:
        srv.stop()


if __name__ == "__main__":
    main()
