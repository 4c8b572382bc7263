"""float32 vs bfloat16 (vs float16) vs int8 exports (int8 on its fused kernels and, as a row of
its own, on the portable ones older servers run): latency in-process and through the
embedded server (gRPC), each server's memory once it has answered, agreement with the
float32 model, what BatchNorm folding saves, and OpenVINO on the same weights as the
outside reference (bfloat16, and int8 after NNCF post-training quantization).

    .venv/bin/python bench/precision.py [--size 513] [--requests 6] [--float16] [--small]
                                        [--no-openvino] [--inter-op N] [--keep DIR]

OpenVINO and NNCF are bench-only: ``pip install openvino nncf`` (or ``pip install
.[bench]``); without them the OpenVINO rows are skipped with a note.  The first line names
the CPU and its AMX/VNNI/BF16/FP16 flags: every figure below depends on them.

Speed is measured on a random-weight resnet_v2_50 DeepLab-v3 (OS16, 21 classes): the
full-size network, whose cost does not depend on its weights.  Agreement is measured on
the bundled demo checkpoint (trained, so its masks mean something) over the demo images
and real photographs (scikit-image's bundled astronaut, coffee, chelsea, rocket), and
also reported for the random-weight network, whose near-tied random logits make it a
pessimistic figure.  All latencies are medians of rounds interleaved across models, so
a busy neighbour slows every model alike; ratios come from one run.

With ``--checkpoint DIR`` agreement is also measured on that checkpoint, e.g. a
resnet_v2_50 trained briefly by bench/train_resnet.py.

int8 exports are calibrated on the demo images (examples/), so the photographs are
held out for int8 agreement; OpenVINO's NNCF int8 is calibrated on the same images.

Goals (issue 15): bfloat16 / float32 latency <= 0.6 in-process and served, with >= 99%
pixel agreement on real photographs.  Issue 20: int8 <= 0.35x float32 on a CPU with
VNNI and AVX512-BF16 but no AMX (<= 0.10x with AMX), bfloat16 <= 0.25x with AMX.
float16 is included where this CPU has native float16 kernels (or with --float16): on
other CPUs it is slower than float32.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from tfdeploy.tfimport import quiet_import_tensorflow  # noqa: E402
from tfdeploy.tfs.requests import images_request  # noqa: E402

# int8 runs on oneDNN's kernels, off by default on CPUs without VNNI, AVX512_BF16 or AMX
# (tfdeploy/tfs/onednn.py): on for this process (in-process rows), as the exporter does
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
tf = quiet_import_tensorflow()

import grpc  # noqa: E402
from PIL import Image  # noqa: E402
from pixels import rss  # noqa: E402
from servers import ServerProcess  # noqa: E402
from skimage import data as skdata  # noqa: E402
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402
from workdir import add_keep_option, work_dir  # noqa: E402

from tfdeploy.demo import DEMO_CHECKPOINT  # noqa: E402
from tfdeploy.export.agreement import EXAMPLES_DIR  # noqa: E402
from tfdeploy.export.checkpoint import locate, write_checkpoint  # noqa: E402
from tfdeploy.export.config import ModelConfig  # noqa: E402
from tfdeploy.export.model import DeepLabV3, random_weights  # noqa: E402
from tfdeploy.export.precision import cpu_flags, cpu_runs_fast  # noqa: E402
from tfdeploy.export.warmup import probe_image  # noqa: E402
from tfdeploy.export.writer import export  # noqa: E402
from tfdeploy.tfs import onednn  # noqa: E402

PHOTOGRAPHS = ("astronaut", "coffee", "chelsea", "rocket")
#: The int8 export on the convolution-only kernels (``--int8-kernels portable``).
PORTABLE = "int8 portable"
SMALL = ModelConfig(num_classes=5, backbone="small_resnet_v2", units=(1, 1, 1, 1),
                    base_depths=(8, 16, 16, 32), root_depth=8, aspp_depth=16,
                    output_stride=16, multi_grid=(1,))


def float_request(image: np.ndarray) -> predict_pb2.PredictRequest:
    return images_request("deeplab", image)


def interleaved(calls: dict[str, callable], rounds: int) -> dict[str, float]:
    """Median seconds per call, one call of each per round (after one untimed call)."""
    for fn in calls.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(rounds):
        for key, fn in calls.items():
            t = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t)
    return {k: float(np.median(v)) for k, v in times.items()}


def photographs(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in PHOTOGRAPHS:
        Image.fromarray(getattr(skdata, name)()).save(folder / f"{name}.png")
    return folder


#: The CPU flags that decide which reduced precisions run natively.
FEATURE_FLAGS = ("amx_bf16", "amx_int8", "amx_fp16", "avx512_bf16", "avx512_vnni", "avx_vnni",
                 "avx512_fp16")


def cpu_line(flags: frozenset[str]) -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    have = [f for f in FEATURE_FLAGS if f in flags]
    return (f"CPU: {model}, {os.cpu_count()} logical cores; "
            f"{' '.join(have) if have else 'no AMX/VNNI/BF16/FP16 flags'}")


def openvino_models(cfg: ModelConfig, weights, size: int, calibration: list[np.ndarray]):
    """OpenVINO on the same weights, converted from the same float32 tf.function our
    export traces: {"openvino bfloat16": compiled, "openvino int8 (NNCF)": compiled}, or
    a note why not (not installed)."""
    try:
        import nncf
        import openvino as ov
    except ImportError as exc:
        return f"OpenVINO rows skipped ({exc.name} not installed: pip install openvino nncf)"
    model = DeepLabV3(cfg, weights, fold_batch_norm=True)
    fn = tf.function(model.logits).get_concrete_function(
        tf.TensorSpec([1, size, size, 3], tf.float32))
    ov_model = ov.convert_model(fn)
    core = ov.Core()
    data = [np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR),
                       np.float32)[None] for im in calibration]
    quantized = nncf.quantize(ov_model, nncf.Dataset(data), subset_size=len(data))
    return {
        "openvino bfloat16": core.compile_model(
            ov_model, "CPU", {"INFERENCE_PRECISION_HINT": "bf16"}),
        "openvino int8 (NNCF)": core.compile_model(quantized, "CPU"),
    }


def agreement_line(label: str, result) -> str:
    a = result.agreement
    photos = [i for i in a["images"] if Path(i["name"]).stem in PHOTOGRAPHS]
    demo = [i for i in a["images"] if Path(i["name"]).stem.startswith("scene_")]
    held = " (held out)" if result.calibration and not photos[0]["calibration"] else ""
    return (f"{label:<34} photographs{held} min "
            f"{min(i['pixel_agreement'] for i in photos):7.2%}, pooled "
            f"{sum(i['pixel_agreement'] * i['height'] * i['width'] for i in photos) / sum(i['height'] * i['width'] for i in photos):7.2%} "  # noqa: E501
            f"| demo images min {min(i['pixel_agreement'] for i in demo):7.2%} "
            f"| all pooled {a['pixel_agreement']:7.2%} | max logit diff "
            f"{a['max_abs_logit_diff']:.3g}")


def median_margin(cfg: ModelConfig, weights, folder: Path) -> float:
    """Median over photograph pixels of the float32 gap between the top two logits, as a
    fraction of the image's largest logit: how close to a tie a typical pixel is, which
    is what decides whether rounding flips its class."""
    model = DeepLabV3(cfg, weights)
    gaps = []
    for name in PHOTOGRAPHS:
        image = np.asarray(Image.open(folder / f"{name}.png").convert("RGB"), np.float32)
        logits = model.logits(tf.constant(image[None])).numpy()[0]
        top = np.sort(logits, axis=-1)
        gaps.append(((top[..., -1] - top[..., -2]) / np.abs(logits).max()).ravel())
    return float(np.median(np.concatenate(gaps)))


def folding(cfg: ModelConfig, weights, image, rounds: int, precisions) -> list[str]:
    """In-process latency of the model built with and without BatchNorm folding."""
    calls, ops = {}, {}
    for p in precisions:
        for fold in (False, True):
            model = DeepLabV3(cfg, weights, precision=p, fold_batch_norm=fold)
            fn = tf.function(model.logits).get_concrete_function(
                tf.TensorSpec([1, None, None, 3], tf.float32))
            key = f"{p} {'folded' if fold else 'unfolded'}"
            calls[key] = lambda fn=fn: fn(image).numpy()
            ops[key] = len(fn.graph.get_operations())
    median = interleaved(calls, rounds)
    lines = []
    for p in precisions:
        u, f = median[f"{p} unfolded"], median[f"{p} folded"]
        lines.append(f"BatchNorm folding, {p:<9} unfolded {u * 1e3:7.1f} ms -> folded "
                     f"{f * 1e3:7.1f} ms = {f / u:.3f} | graph ops {ops[f'{p} unfolded']} -> "
                     f"{ops[f'{p} folded']}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=513)
    ap.add_argument("--requests", type=int, default=6, help="timed rounds per figure")
    ap.add_argument("--float16", action="store_true",
                    help="include float16 even where this CPU has no native kernels")
    ap.add_argument("--checkpoint", type=Path,
                    help="also measure agreement on this checkpoint (e.g. a trained "
                         "resnet_v2_50: bench/train_resnet.py makes one)")
    ap.add_argument("--small", action="store_true",
                    help="a small random network instead of resnet_v2_50 (develop the bench)")
    ap.add_argument("--no-openvino", action="store_true", help="skip the OpenVINO rows")
    ap.add_argument("--inter-op", type=int, metavar="N",
                    help="also serve every export with --tensorflow_inter_op_parallelism=N "
                         "(0, the default, lets TensorFlow choose: one thread per core) and "
                         "print those served rows beside the default ones")
    add_keep_option(ap)
    args = ap.parse_args()
    work = work_dir("precision", args.keep)
    flags = cpu_flags()
    print(cpu_line(flags), flush=True)
    if not onednn.on_by_default(flags):
        print("oneDNN: off by default on this CPU, on here and in every server of this bench "
              "(int8 needs it); a float32 server left at TensorFlow's default runs Eigen",
              flush=True)
    precisions = ["float32", "bfloat16"]
    if args.float16 or cpu_runs_fast("float16", flags):
        precisions.append("float16")
    precisions.append("int8")
    photos = photographs(work / "photographs")
    # int8 calibrates on the demo images: the photographs stay held out.
    calib = {"calibration": [EXAMPLES_DIR]}

    def extra(p):
        return calib if p == "int8" else {}

    # Agreement where it means something: the trained demo model.
    demo = {p: export(DEMO_CHECKPOINT, work / f"demo-{p}", precision=p, min_agreement=0.0,
                      probes=[photos], do_warmup=False, **extra(p)) for p in precisions}

    trained = {}
    if args.checkpoint:
        trained = {p: export(args.checkpoint, work / f"trained-{p}", precision=p,
                             min_agreement=0.0, probes=[photos], do_warmup=False, **extra(p))
                   for p in precisions}

    cfg = SMALL if args.small else ModelConfig()
    name = "small random network" if args.small else "random-weight resnet_v2_50 OS16"
    weights = random_weights(cfg)
    write_checkpoint(work / "ckpt", cfg, weights)
    results = {}
    for p in precisions:
        results[p] = export(work / "ckpt", work / f"models-{p}", precision=p, min_agreement=0.0,
                            probes=[photos], **extra(p))
    # what a server before TensorFlow 2.17 runs (--int8-kernels portable): timed beside
    results[PORTABLE] = export(work / "ckpt", work / "models-int8-portable", precision="int8",
                               min_agreement=0.0, probes=[photos], int8_kernels="portable",
                               **extra("int8"))
    rows = [*precisions, PORTABLE]
    image = probe_image(args.size, args.size)
    x = tf.constant(image[None].astype(np.float32))
    hw = tf.constant([args.size])
    openvino = "OpenVINO rows skipped (--no-openvino)"
    if not args.no_openvino:
        from tfdeploy.export.agreement import read_image

        demo_images = [read_image(p) for p in sorted(EXAMPLES_DIR.glob("*.jpg"))]
        openvino = openvino_models(cfg, weights, args.size, demo_images)
    settings = {"served": ()}
    if args.inter_op is not None:
        settings[f"served inter-op {args.inter_op}"] = (
            f"--tensorflow_inter_op_parallelism={args.inter_op}",)
    servers = {(kind, p): ServerProcess("--model_name=deeplab",
                                        f"--model_base_path={Path(r.path).parent}", *flags,
                                        log_dir=work)
               for kind, flags in settings.items() for p, r in results.items()}
    try:
        # In-process and served calls interleave in the same rounds: one set of conditions
        # (a busy neighbour on the shared cores slows all four figures alike).
        calls = {}
        for p, r in results.items():
            fn = tf.saved_model.load(r.path).signatures["predict_images"]
            calls[("local", p)] = lambda fn=fn: fn(images=x, height=hw, width=hw)[
                "segmentation_map"].numpy()
        req = float_request(image)
        for key, srv in servers.items():
            srv.wait_available(1)
            stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(
                srv.grpc_target, options=[("grpc.max_receive_message_length", -1)]))
            calls[key] = lambda stub=stub: stub.Predict(req, 600)
        if isinstance(openvino, dict):
            for key, compiled in openvino.items():
                request = compiled.create_infer_request()
                calls[("local", key)] = lambda r=request: r.infer({0: x.numpy()})
        median = interleaved(calls, args.requests)
        # each server's memory once it has answered (warmup replayed both signatures)
        served_rss = {key: rss(srv.proc.pid) for key, srv in servers.items()}
    finally:
        for srv in servers.values():
            srv.stop()
    local = {p: median[("local", p)] for p in rows}
    served = {p: median[("served", p)] for p in rows}

    fold_lines = folding(cfg, weights, x, args.requests, ["float32", "bfloat16"])
    margins = {"demo": median_margin(locate(DEMO_CHECKPOINT).config,
                                     locate(DEMO_CHECKPOINT).load_weights(), photos),
               name.split(" OS")[0]: median_margin(cfg, weights, photos)}
    if args.checkpoint:
        source = locate(args.checkpoint)
        margins[f"{args.checkpoint.name}"] = median_margin(source.config,
                                                           source.load_weights(), photos)

    fast = ", ".join(f"{p} {'native' if cpu_runs_fast(p, flags) else 'NOT native'}"
                     for p in precisions[1:])
    print(f"speed: {name}, {args.size}x{args.size}, median of {args.requests} interleaved "
          f"rounds; CPU: {fast}")
    for p in rows:
        print(f"{p:<13} in-process {local[p] * 1e3:7.1f} ms ({local[p] / local['float32']:.2f}x)"
              f" | gRPC embedded server {served[p] * 1e3:7.1f} ms "
              f"({served[p] / served['float32']:.2f}x)"
              f" | SavedModel {_size(results[p].path) / 1e6:6.1f} MB"
              f" | server RSS {served_rss[('served', p)] / 2**20:6.0f} MB")
    for kind in list(settings)[1:]:
        other = {p: median[(kind, p)] for p in rows}
        print(f"{kind}: " + ", ".join(
            f"{p} {other[p] * 1e3:.1f} ms ({other[p] / served[p]:.2f}x of served with the "
            f"default, {other[p] / other['float32']:.2f}x float32)" for p in rows))
    if isinstance(openvino, dict):
        for key in openvino:
            t = median[("local", key)]
            print(f"{key:<20} in-process {t * 1e3:7.1f} ms ({t / local['float32']:.2f}x of our "
                  f"float32; our int8 / this = {local['int8'] / t:.2f})")
    else:
        print(openvino)
    amx = "amx_int8" in flags
    for p in precisions[1:]:
        goal = {"int8": 0.10 if amx else 0.35, "bfloat16": 0.25 if amx else 0.60}.get(p, 0.60)
        print(f"goal {p}: in-process {local[p] / local['float32']:.2f}x, served "
              f"{served[p] / served['float32']:.2f}x (goal <= {goal:.2f})")
    print("agreement with the float32 checkpoint model (pixels whose class matches):")
    for p in precisions[1:]:
        print(agreement_line(f"demo model (trained), {p}", demo[p]))
        if trained:
            print(agreement_line(f"{args.checkpoint.name}, {p}", trained[p]))
        print(agreement_line(f"{name.split(' OS')[0]}, {p}", results[p]))
    print("median top-2 logit gap on the photographs, relative to the largest logit: "
          + ", ".join(f"{k} {v:.2%}" for k, v in margins.items())
          + " (smaller: closer to a tie, more pixels flip)")
    print(f"float32 export (BatchNorm folded) vs float32 checkpoint model, max logit diff: "
          f"demo {demo['float32'].max_abs_logit_diff:.3g}, {name.split(' OS')[0]} "
          f"{results['float32'].max_abs_logit_diff:.3g} (logits up to "
          f"{max(i['max_abs_logit'] for i in results['float32'].agreement['images']):.3g})")
    for line in fold_lines:
        print(line)


def _size(path: str) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


if __name__ == "__main__":
    main()
