"""Throughput on mixed-size traffic with server-side batching against without.

    .venv/bin/python bench/mixed_sizes.py [--concurrency 8] [--requests 64] [--rounds 2]

The demo export (or ``--model resnet50``, random weights; ``serving_default`` takes
images of different sizes in one batch: same-size batches run as one, mixed ones image
by image, since a pad would change the masks) is served by two
``tfdeploy-model-server`` processes on 127.0.0.1, one with ``--enable_batching``
(max_batch_size 8, batch_timeout_micros 5000, a batch thread per core) and one
without.  ``tfdeploy bench`` sends the same folder of JPEGs of four sizes (the demo
scenes resized: 320x240, 300x200, 256x256, 400x300) at ``--concurrency`` for
``--requests`` requests per window; the servers are measured in turn, ``--rounds``
times (A B A B), so load from elsewhere on the machine touches both alike.  Printed:
the CPU, each window's throughput, the medians and their ratio (batched / unbatched).
``--one-size`` sends 320x240 images only: the same comparison on uniform traffic.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(HERE))

from pixels import cpu_name  # noqa: E402
from servers import ServerProcess  # noqa: E402
from workdir import add_keep_option, work_dir  # noqa: E402

SIZES = ((320, 240), (300, 200), (256, 256), (400, 300))  # width x height
#: TF Serving's defaults but for the timeout; one batch thread per core (its default too).
BATCHING = """max_batch_size {{ value: 8 }}
batch_timeout_micros {{ value: 5000 }}
num_batch_threads {{ value: {threads} }}
max_enqueued_batches {{ value: 100 }}
"""


def images(folder: Path, sizes: tuple[tuple[int, int], ...] = SIZES) -> Path:
    from PIL import Image

    scenes = sorted((ROOT / "examples").glob("scene_*.jpg"))
    folder.mkdir(parents=True, exist_ok=True)
    for k, scene in enumerate(scenes):
        for w, h in sizes:
            Image.open(scene).convert("RGB").resize((w, h)).save(folder / f"{k}_{w}x{h}.jpg")
    return folder


def bench(target: str, folder: Path, concurrency: int, requests: int) -> float:
    out = subprocess.run(
        [sys.executable, "-m", "tfdeploy", "bench", str(folder), "--server", target,
         "-c", str(concurrency), "-n", str(requests), "--warmup", str(concurrency), "--json"],
        capture_output=True, text=True, check=True, cwd=ROOT, timeout=1800)
    doc = json.loads(out.stdout)
    levels = doc["levels"] if isinstance(doc, dict) and "levels" in doc else doc
    level = levels[0] if isinstance(levels, list) else levels
    if level.get("errors"):
        raise SystemExit(f"{target}: {level['errors']} requests failed")
    return float(level["throughput"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--model", default="demo", help="demo, or resnet50 (random weights)")
    ap.add_argument("--one-size", action="store_true",
                    help="every image 320x240 instead (what batching gains on uniform traffic)")
    add_keep_option(ap)
    args = ap.parse_args()
    print(f"CPU: {cpu_name()} ({os.cpu_count()} cores)", flush=True)
    work = work_dir("mixed", args.keep)
    from tfdeploy.export.writer import export

    base = work / "deeplab"
    source = None
    if args.model == "resnet50":
        from tfdeploy.export.checkpoint import write_checkpoint
        from tfdeploy.export.config import ModelConfig
        from tfdeploy.export.model import random_weights

        cfg = ModelConfig()  # resnet_v2_50, output stride 16, 21 classes
        source = work / "ckpt"
        write_checkpoint(source, cfg, random_weights(cfg))
    elif args.model != "demo":
        raise SystemExit(f"unknown model {args.model!r} (demo, resnet50)")
    export(source, base, do_verify=False)
    print(f"{args.model} export", flush=True)
    sizes = SIZES[:1] if args.one_size else SIZES
    folder = images(work / "images", sizes)
    params = work / "batching.pbtxt"
    params.write_text(BATCHING.format(threads=os.cpu_count() or 1))
    servers = {
        "batching": ServerProcess("--model_name=deeplab", f"--model_base_path={base}",
                                  "--enable_batching", f"--batching_parameters_file={params}",
                                  log_dir=work),
        "no batching": ServerProcess("--model_name=deeplab", f"--model_base_path={base}",
                                     log_dir=work),
    }
    try:
        for srv in servers.values():
            srv.wait_available(1)
        runs: dict[str, list[float]] = {name: [] for name in servers}
        for _ in range(args.rounds):
            for name, srv in servers.items():
                value = bench(srv.grpc_target, folder, args.concurrency, args.requests)
                runs[name].append(value)
                print(f"  {name:<12} {value:7.2f} requests/s", flush=True)
        with_, without = (statistics.median(v) for v in runs.values())
        print(f"{len(sizes)} sizes x {len(list(folder.iterdir())) // len(sizes)} scenes, "
              f"concurrency {args.concurrency}, {args.requests} requests per window: "
              f"batching {with_:.2f}/s, no batching {without:.2f}/s, "
              f"ratio {with_ / without:.2f}x")
    finally:
        for srv in servers.values():
            srv.stop()


if __name__ == "__main__":
    main()
