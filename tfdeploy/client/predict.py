"""Images in, mask files out: the work behind ``tfdeploy predict``.

Picks the signature from the server's metadata (encoded images to ``serving_default`` when
the model has it: ~20x fewer bytes than float pixels), runs requests concurrently, and
yields results in input order so output and progress stay readable.
"""

from __future__ import annotations

import glob
import io
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from tfdeploy.client import images, masks
from tfdeploy.client.base import ClientError, Transport
from tfdeploy.tfs import names
from tfdeploy.tfs.codes import Code
from tfdeploy.tfs.saved_model import Signature

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
ENCODED, FLOAT = names.SERVING_DEFAULT, names.PREDICT_IMAGES


class PredictError(Exception):
    """Nothing can be predicted (no such model, no usable signature, ...)."""


@dataclass
class Job:
    path: Path
    name: Path  # output path relative to --output-dir, without suffix


@dataclass
class ImageResult:
    path: str
    mask: str | None = None
    overlay: str | None = None
    classes: dict[str, int] = field(default_factory=dict)
    height: int = 0
    width: int = 0
    seconds: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def expand(items: Iterable[str]) -> list[Job]:
    """Files, directories (recursively, image suffixes only) and globs, in a stable order.
    Directory inputs keep their sub-folder layout in the output; clashes get -2, -3..."""
    jobs: list[Job] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            for f in sorted(x for x in p.rglob("*")
                            if x.is_file() and x.suffix.lower() in IMAGE_SUFFIXES):
                jobs.append(Job(f, f.relative_to(p).with_suffix("")))
        elif not p.exists() and glob.has_magic(item):
            for f in sorted(glob.glob(item, recursive=True)):
                if Path(f).is_file():
                    jobs.append(Job(Path(f), Path(Path(f).stem)))
        else:
            jobs.append(Job(p, Path(p.stem)))
    seen: dict[Path, int] = {}
    for job in jobs:
        n = seen.get(job.name, 0) + 1
        seen[job.name] = n
        if n > 1:
            job.name = job.name.with_name(f"{job.name.name}-{n}")
    return jobs


def choose_signature(signatures: dict[str, Signature], wanted: str | None) -> str:
    if wanted:
        if wanted not in signatures:
            raise PredictError(f"the model has no signature {wanted!r} "
                               f"(it has: {', '.join(sorted(signatures))})")
        return wanted
    encoded = signatures.get(ENCODED)
    if encoded and names.IMAGE_BYTES in encoded.inputs and names.MASK_PNG in encoded.outputs:
        return ENCODED
    if FLOAT in signatures:
        return FLOAT
    raise PredictError(f"the model has neither a {ENCODED!r} signature "
                       f"({names.IMAGE_BYTES} -> {names.MASK_PNG}) nor the seed's {FLOAT!r} "
                       "(it has: "
                       f"{', '.join(sorted(signatures))})")


class Predictor:
    def __init__(self, transport: Transport, model: str = names.DEFAULT_MODEL_NAME,
                 signature: str | None = None,
                 version: int | None = None, output_dir: Path | None = Path("masks"),
                 overlay: bool = False, max_side: int | None = None):
        self.transport, self.model, self.version = transport, model, version
        self.output_dir, self.overlay, self.max_side = output_dir, overlay, max_side
        try:
            self.signatures = transport.metadata(model, version)
        except ClientError as exc:
            raise PredictError(f"cannot get metadata of model {model!r}: {exc}") from None
        self.signature = choose_signature(self.signatures, signature)

    def infer(self, image: images.LoadedImage) -> tuple[Image.Image, bytes | None]:
        """(mask as a palette "P" image, the server's PNG bytes when it sent them)."""
        if self.signature == ENCODED:
            png = self.transport.predict_png(self.model, image.encoded, self.version)
            try:
                mask = Image.open(io.BytesIO(png))
                mask.load()
            except (OSError, SyntaxError) as exc:
                raise ClientError("INTERNAL", f"server sent an unreadable mask ({exc})") \
                    from None
            return mask, png
        import numpy as np

        h, w = image.size
        inputs = {names.IMAGES: image.rgb[None].astype(np.float32),
                  names.HEIGHT: np.array([h], np.int32),
                  names.WIDTH: np.array([w], np.int32)}
        dtypes = {k: d for k, (d, _) in self.signatures[FLOAT].outputs.items()}
        out = self.transport.predict(self.model, FLOAT, inputs, self.version,
                                     outputs=[names.SEGMENTATION_MAP], output_dtypes=dtypes)
        return masks.palette_image(out[names.SEGMENTATION_MAP].reshape(h, w)), None

    def one(self, job: Job) -> ImageResult:
        result = ImageResult(str(job.path))
        started = time.perf_counter()
        try:
            image = images.load(job.path, self.max_side)
            mask, png = self.infer(image)
            if (mask.height, mask.width) != image.size:
                raise ClientError("INTERNAL", f"server returned a {mask.width}x{mask.height} "
                                  f"mask for a {image.image.width}x{image.image.height} image")
            full = masks.resize_mask(mask, image.original_size)
            result.height, result.width = image.original_size
            result.classes = masks.class_counts(full)
            if self.output_dir is not None:
                target = self.output_dir / job.name.with_suffix(".png")
                # the server's PNG as it is when nothing was resized
                masks.save_atomic(png if png is not None and full is mask else full, target)
                result.mask = str(target)
                if self.overlay:
                    target = self.output_dir / job.name.with_name(
                        f"{job.name.name}.overlay.jpg")
                    masks.save_atomic(masks.overlay(image.image, full), target,
                                      format="JPEG", quality=90)
                    result.overlay = str(target)
        except images.BadImage as exc:
            result.error = str(exc)
        except ClientError as exc:
            result.error = exc.message if exc.code == Code.INVALID_ARGUMENT else str(exc)
        except OSError as exc:
            result.error = f"cannot write mask: {exc.strerror or exc}"
        result.seconds = time.perf_counter() - started
        return result

    def summary(self, results: list[ImageResult], seconds: float) -> dict:
        failed = sum(not r.ok for r in results)
        return {"images": len(results), "ok": len(results) - failed, "failed": failed,
                "seconds": round(seconds, 3),
                "images_per_second": round(len(results) / seconds, 2) if seconds else None,
                "signature": self.signature, "transport": self.transport.name,
                "output_dir": str(self.output_dir) if self.output_dir else None,
                "endpoints": dict(self.transport.counts)}

    def run(self, jobs: list[Job], concurrency: int = 1) -> Iterator[ImageResult]:
        """Results in input order; at most ``concurrency`` requests in flight."""
        if concurrency <= 1:
            yield from map(self.one, jobs)
            return
        with ThreadPoolExecutor(concurrency, thread_name_prefix="predict") as pool:
            pending = []
            it = iter(jobs)
            for job in it:
                pending.append(pool.submit(self.one, job))
                if len(pending) >= concurrency * 2:
                    break
            while pending:
                yield pending.pop(0).result()
                job = next(it, None)
                if job is not None:
                    pending.append(pool.submit(self.one, job))
