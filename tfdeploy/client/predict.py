"""Images in, mask files out: the work behind ``tfdeploy predict``.

Picks the signature from the server's metadata (encoded images to ``serving_default`` when
the model has it: ~20x fewer bytes than float pixels), runs requests concurrently, and
yields results in input order so output and progress stay readable.
"""

from __future__ import annotations

import glob
import io
import os
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from tfdeploy.client import images, masks
from tfdeploy.client.base import ClientError, Transport
from tfdeploy.client.defaults import DEFAULT_RETRIES, DEFAULT_RETRY_TIMEOUT, DEFAULT_TIMEOUT
from tfdeploy.client.tls import TlsConfig
from tfdeploy.tfs import names
from tfdeploy.tfs.codes import Code
from tfdeploy.tfs.saved_model import Signature

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
ENCODED, FLOAT = names.SERVING_DEFAULT, names.PREDICT_IMAGES


class PredictError(Exception):
    """Nothing can be predicted (no such model, no usable signature, ...).

    ``cause`` tells a front end what the user can change, so it can say how in its own
    terms (a flag, an argument): ``"wrong_transport"`` (the port speaks the other
    protocol), ``"no_server"`` (nothing answers there), or None.  ``str()`` is
    ``message`` plus the library's ``hint`` (in Python terms); a front end with its own
    words for the fix uses ``message``."""

    def __init__(self, message: str, cause: str | None = None, hint: str = "") -> None:
        super().__init__(f"{message} {hint}" if hint else message)
        self.message, self.cause, self.hint = message, cause, hint


#: How a Python caller fixes each connection problem (the CLI says it with flags).
_HINTS = {
    "no_server": "Start one with tfdeploy.serve().",
    "wrong_transport": "Use the other transport (Client(..., transport=...)), or the "
                       "server's port for this one.",
}


@dataclass
class Job:
    path: Path
    name: Path  # output path relative to --output-dir, without suffix
    #: why ``name`` is not the input's stem (another input has the same stem), else ""
    renamed: str = ""


@dataclass
class ImageResult:
    path: str
    mask: str | None = None
    overlay: str | None = None
    #: pixels per class index
    classes: dict[int, int] = field(default_factory=dict)
    #: share of the image's pixels per class name (``class N`` where no name is known)
    class_shares: dict[str, float] = field(default_factory=dict)
    height: int = 0
    width: int = 0
    seconds: float = 0.0
    error: str | None = None
    #: the mask is not named ``<stem>.png`` (another input has the same stem)
    renamed: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


def expand(items: Iterable[str]) -> list[Job]:
    """Files, directories (recursively, image suffixes only) and globs, in a stable order.

    A mask is named after its input's stem (``scene.jpg`` -> ``scene.png``); directory
    inputs keep their sub-folder layout.  Inputs whose stems clash (``tiny.jpg`` and
    ``tiny.png``) keep their whole file name instead (``tiny.jpg.png``, ``tiny.png.png``),
    so each mask says which file it is; only when whole names clash too (the same file
    name from two folders given one by one) does a counter follow (``x.jpg-2.png``).
    ``Job.renamed`` marks every mask named so, for the summary to list."""
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
    stems: dict[Path, int] = {}
    for job in jobs:
        stems[job.name] = stems.get(job.name, 0) + 1
    taken: set[Path] = {job.name for job in jobs if stems[job.name] == 1}
    for job in jobs:
        if stems[job.name] == 1:
            continue
        name = job.name.with_name(job.path.name)
        n = 1
        while name in taken:
            n += 1
            name = job.name.with_name(f"{job.path.name}-{n}")
        taken.add(name)
        job.name, job.renamed = name, "same stem as another input"
    return jobs


def output_paths(job: Job, output_dir: Path, overlay: bool = False) -> list[Path]:
    """The files predicting ``job`` writes under ``output_dir``: its mask, and its overlay
    preview with ``overlay``."""
    # the name may carry a dot of its own (tiny.jpg): append, never replace, a suffix
    paths = [output_dir / job.name.with_name(f"{job.name.name}.png")]
    if overlay:
        paths.append(output_dir / job.name.with_name(f"{job.name.name}.overlay.jpg"))
    return paths


#: Suffixes that make an output folder's name look like a file's (``-o mask.png``).
_FILE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif",
                            ".tiff"})


def output_dir_mistake(output_dir: Path) -> str | None:
    """Why ``output_dir`` is probably not the folder its user meant, or None: a name like
    ``mask.png`` that is not a folder yet (masks are written inside it, as <stem>.png)."""
    if output_dir.suffix.lower() in _FILE_SUFFIXES and not output_dir.is_dir():
        return (f"{output_dir} looks like a file name, but masks go into a folder (as "
                f"<stem>.png inside it): give a folder, e.g. {output_dir.parent / 'masks'}")
    return None


def overwrites(jobs: list[Job], output_dir: Path, overlay: bool = False) -> list[str]:
    """Outputs of this run that would replace one of its inputs, or another of its
    outputs, as ``"output (reason)"``; empty when the run is safe.  Checked before any
    request, so a photo is never replaced by its mask (``predict x.png -o .``)."""
    inputs = {_same_file_key(job.path): job.path for job in jobs}
    written: dict[Path, Path] = {}
    clashes = []
    for job in jobs:
        for target in output_paths(job, output_dir, overlay):
            key = _same_file_key(target)
            if key in inputs:
                clashes.append(f"{target} (is the input {inputs[key]})")
            elif key in written and written[key] != job.path:
                clashes.append(f"{target} (also the output of {written[key]})")
            written[key] = job.path
    return clashes


def _same_file_key(path: Path) -> Path:
    """Paths naming the same file compare equal (relative, ``..``, symlinks)."""
    return Path(os.path.realpath(path))


def missing_inputs(items: Iterable[str]) -> list[str]:
    """Arguments that name nothing: a path that does not exist, a glob matching no file.
    Checked before any network call, so a typo is reported at once as what it is."""
    missing = []
    for item in items:
        if Path(item).exists():
            continue
        if not glob.has_magic(item) or not any(
                Path(f).is_file() for f in glob.iglob(item, recursive=True)):
            missing.append(item)
    return missing


def connection_problem(exc: ClientError, transport: str) -> tuple[str, str] | None:
    """(cause, what it means) for a call that never reached a model server, None when the
    server answered.  The raw messages (a refused connection, grpc's HTTP/2 parse error
    on a REST port) do not say it."""
    if exc.code != Code.UNAVAILABLE:
        return None
    text = exc.message.lower()
    if transport == "grpc" and "http/2" in text:
        return "wrong_transport", "that port does not speak gRPC (a REST port?)"
    if transport == "rest" and "http/1.1" in text:
        return "wrong_transport", "that port does not speak HTTP/1.1 (a gRPC port?)"
    if "refused" in text or "failed to connect" in text or "cannot reach" in text:
        return "no_server", "is a model server running there?"
    return None


def too_large_hint(message: str) -> str:
    """A server's error, readable: models exported before the size-limit message lost its
    apostrophe show TensorFlow's escaped ``model\\'s``; an image over the model's size
    limit gets how to send a smaller one."""
    message = message.replace("\\'", "'")
    if "larger than this model" in message:
        message += (" -- send it smaller: tfdeploy predict --max-side N, "
                    "Client(max_side=N)")
    return message


def choose_signature(signatures: dict[str, Signature], wanted: str | None,
                     complete: bool = True) -> str:
    """The signature to use: ``wanted`` if the model has it (or the metadata is not
    ``complete`` and the server is to say), else the encoded-image one, else the seed's."""
    if wanted:
        if wanted not in signatures and complete:
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


def served_class_names(transport: Transport, model: str, version: int | str | None,
                       signatures: dict[str, Signature]) -> dict[int, str]:
    """Class index -> name from the model's own ``class_names`` signature (one request;
    the export stores the names in the SavedModel, so any TF Serving answers them).
    Empty when the model has no such signature (exports from before it) or the call
    fails: names are a convenience, predictions go on without them."""
    sig = signatures.get(names.CLASS_NAMES)
    if sig is None or names.CLASS_NAMES not in sig.outputs or len(sig.inputs) > 1:
        return {}
    import numpy as np

    inputs = {key: np.zeros((1,), np.int32) for key in sig.inputs}  # one row of names
    try:
        out = transport.predict(model, names.CLASS_NAMES, inputs, version,
                                outputs=[names.CLASS_NAMES],
                                output_dtypes={names.CLASS_NAMES:
                                               sig.outputs[names.CLASS_NAMES][0]})
        values = np.asarray(out[names.CLASS_NAMES])
        values = values[0] if values.ndim == 2 else values.reshape(-1)
        return {i: v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                for i, v in enumerate(values.tolist())}
    except (ClientError, KeyError, ValueError, TypeError):
        return {}


def class_label(class_names: dict[int, str], index: int) -> str:
    """The name of class ``index``, or ``class N`` when the model does not say."""
    return class_names.get(index) or f"class {index}"


class Predictor:
    def __init__(self, transport: Transport, model: str = names.DEFAULT_MODEL_NAME,
                 signature: str | None = None,
                 version: int | str | None = None, output_dir: Path | None = Path("masks"),
                 overlay: bool = False, max_side: int | None = None):
        """``version``: a number, a version label (a str), or None for the latest."""
        self.transport, self.model, self.version = transport, model, version
        #: class index -> name for a model that serves none (``Client`` fills it from
        #: the export's record); the summary carries them next to the pixel counts
        self.fallback_names: dict[int, str] = {}
        self._served_names: dict[int, str] | None = None
        self._names_lock = threading.Lock()
        self.output_dir, self.overlay, self.max_side = output_dir, overlay, max_side
        try:
            self.signatures = transport.metadata(model, version)
        except ClientError as exc:
            problem = connection_problem(exc, transport.name)
            where = f" from {exc.endpoint}" if exc.endpoint else ""
            cause = problem[0] if problem else None
            which = (f" (label {version!r})" if isinstance(version, str) else
                     f" (version {version})" if version is not None else "")
            raise PredictError(f"cannot get metadata of model {model!r}{which}{where}: {exc}"
                               + (f"; {problem[1]}" if problem else ""),
                               cause=cause, hint=_HINTS.get(cause, "")) from None
        self.signature = choose_signature(
            self.signatures, signature,
            complete=getattr(transport, "lists_every_signature", True))
        # what the endpoints served before any image: the summary counts requests only
        self._counts_before = dict(transport.counts)

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
        known = self.signatures.get(FLOAT)  # v2 over gRPC may not list it
        dtypes = {k: d for k, (d, _) in known.outputs.items()} if known else {}
        out = self.transport.predict(self.model, FLOAT, inputs, self.version,
                                     outputs=[names.SEGMENTATION_MAP], output_dtypes=dtypes)
        return masks.palette_image(out[names.SEGMENTATION_MAP].reshape(h, w)), None

    def mask(self, image: images.LoadedImage) -> tuple[Image.Image, bytes | None]:
        """(mask at the image's original size, the server's PNG when that is it as sent)."""
        mask, png = self.infer(image)
        if (mask.height, mask.width) != image.size:
            raise ClientError("INTERNAL", f"server returned a {mask.width}x{mask.height} "
                              f"mask for a {image.image.width}x{image.image.height} image")
        full = masks.resize_mask(mask, image.original_size)
        return full, png if full is mask else None

    def one(self, job: Job) -> ImageResult:
        result = ImageResult(str(job.path), renamed=bool(job.renamed))
        started = time.perf_counter()
        try:
            image = images.load(job.path, self.max_side)
            full, png = self.mask(image)
            result.height, result.width = image.original_size
            result.classes = masks.class_counts(full)
            if self.output_dir is not None:
                targets = output_paths(job, self.output_dir, self.overlay)
                # the server's PNG as it is when nothing was resized
                masks.save_atomic(png if png is not None else full, targets[0])
                result.mask = str(targets[0])
                if self.overlay:
                    masks.save_atomic(masks.overlay(image.image, full, self.class_names),
                                      targets[1],
                                      format="JPEG", quality=90)
                    result.overlay = str(targets[1])
        except images.BadImage as exc:
            result.error = str(exc)
        except ClientError as exc:
            result.error = too_large_hint(
                exc.message if exc.code == Code.INVALID_ARGUMENT else str(exc))
        except OSError as exc:
            result.error = f"cannot write mask: {exc.strerror or exc}"
        result.seconds = time.perf_counter() - started
        return result

    @property
    def class_names(self) -> dict[int, str]:
        """Class index -> name: the model's own (its ``class_names`` signature), asked
        the first time names are needed and kept for this Predictor's model version (a
        request the server logs like any other, so nothing asks before names are used),
        else ``fallback_names``."""
        with self._names_lock:
            if self._served_names is None:
                self._served_names = served_class_names(self.transport, self.model,
                                                         self.version, self.signatures)
        return self._served_names or self.fallback_names

    @property
    def known_class_names(self) -> dict[int, str]:
        """The names known without asking the model (those it answered before, else
        ``fallback_names``)."""
        return self._served_names or self.fallback_names

    def name_classes(self, results: list[ImageResult]) -> None:
        """Fill each result's ``class_shares`` (share of its pixels by class name)."""
        names = self.class_names
        for result in results:
            total = max(1, sum(result.classes.values()))
            result.class_shares = {class_label(names, i): round(n / total, 6)
                                   for i, n in result.classes.items()}

    def summary(self, results: list[ImageResult], seconds: float,
                names: bool = True) -> dict:
        """The run in figures; with ``names``, the class names too (asking the model
        for them if nothing did yet)."""
        failed = sum(not r.ok for r in results)
        return {"images": len(results), "ok": len(results) - failed, "failed": failed,
                "seconds": round(seconds, 3),
                # a rate of failures is no rate: only answered images count
                "images_per_second": (round((len(results) - failed) / seconds, 2)
                                      if seconds and failed < len(results) else None),
                "signature": self.signature, "transport": self.transport.name,
                "protocol": getattr(self.transport, "protocol", "v1"),
                "output_dir": str(self.output_dir) if self.output_dir else None,
                # prediction requests per endpoint (the metadata call is not one)
                "endpoints": {k: n - self._counts_before.get(k, 0)
                              for k, n in self.transport.counts.items()},
                # names of the class indices in results' ``classes`` (JSON: string keys)
                "class_names": ({str(i): n for i, n in self.class_names.items()} or None)
                if names else None,
                # masks not named <stem>.png: input -> mask
                "renamed": {r.path: r.mask for r in results if r.renamed and r.mask}}

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


class Client:
    """A TF Serving model, from Python: ``predict(image)`` returns the segmentation mask.

    ``address`` is ``host[:port]`` or several (a list, or comma-separated: round robin
    with failover).  Works with the official tensorflow_model_server and with
    tfdeploy-model-server, over gRPC (default port 8500) or REST (8501).  The model's
    signatures are read on first use, so creating a Client never blocks.

    >>> with Client("127.0.0.1:8500") as client:          # doctest: +SKIP
    ...     mask = client.predict("examples/scene_1.jpg")  # PIL "P" image, pixel = class
    """

    def __init__(self, address: str | Iterable[str], transport: str = "grpc", *,
                 model: str = names.DEFAULT_MODEL_NAME, signature: str | None = None,
                 version: int | None = None, label: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT,
                 retries: int = DEFAULT_RETRIES, retry_timeout: float = DEFAULT_RETRY_TIMEOUT,
                 max_side: int | None = None, protocol: str = "v1",
                 tls: TlsConfig | None = None):
        """``version`` (a number) or ``label`` (a version label of the server's model
        config, e.g. ``"stable"``) picks the model version; neither: the latest.
        ``protocol="v2"`` speaks the Open Inference Protocol over ``transport`` (gRPC's
        ``inference.GRPCInferenceService`` or REST's ``/v2/models/...``)."""
        from tfdeploy.client.pool import connect

        if version is not None and label is not None:
            raise ValueError("give version or label, not both")
        self.model, self.max_side = model, max_side
        self.version: int | str | None = label if label is not None else version
        self._signature = signature
        self.transport: Transport = connect(address, transport, timeout=timeout,
                                            retries=retries, retry_timeout=retry_timeout,
                                            protocol=protocol, tls=tls)
        self._predictor: Predictor | None = None
        self._executor: ThreadPoolExecutor | None = None
        #: class index -> name for models that do not serve their own (exports before
        #: the ``class_names`` signature); ``Server.client()`` fills it from the export
        self.class_names: dict[int, str] = {}

    @property
    def addresses(self) -> list[str]:
        return list(getattr(self.transport, "addresses", []))

    def metadata(self) -> dict[str, Signature]:
        """Signature key -> Signature (inputs and outputs with dtypes and shapes)."""
        return self.transport.metadata(self.model, self.version)

    def status(self) -> dict[int, str]:
        """Version -> state (``AVAILABLE``, ``LOADING``, ``END``...).  With a label:
        every version, as TF Serving's status API ignores labels."""
        return self.transport.status(self.model, self.version)

    def predictor(self, output_dir: Path | None = None, overlay: bool = False,
                  max_side: int | None = None) -> Predictor:
        """A Predictor over this client's connection (files in, mask files out); reads
        the model's metadata.  PredictError when the model cannot be used."""
        predictor = Predictor(self.transport, self.model, self._signature, self.version,
                              output_dir=output_dir, overlay=overlay,
                              max_side=max_side if max_side is not None else self.max_side)
        predictor.fallback_names = dict(self.class_names)
        return predictor

    def names(self) -> dict[int, str]:
        """Class index -> name: the model's own (its ``class_names`` signature, asked
        once), else ``class_names`` (what ``Server.client()`` found in the export); empty
        when neither says (masks then have ``class N``)."""
        return dict(self._get_predictor().class_names)

    @property
    def signature(self) -> str:
        """The signature predictions use (``serving_default`` when the model has it)."""
        return self._get_predictor().signature

    def _get_predictor(self) -> Predictor:
        if self._predictor is None:
            self._predictor = self.predictor()
        return self._predictor

    def predict(self, image) -> Image.Image:
        """The mask of ``image`` (a path, encoded bytes, a PIL image or a uint8 numpy
        array) as a PIL palette ("P") image of the input's size; pixel value = class
        index, Pascal VOC colours.  Raises ``images.BadImage`` for unusable input and
        ``ClientError`` when the server fails."""
        try:
            loaded = images.from_any(image, self.max_side)
        except images.BadImage as exc:
            if isinstance(image, (str, Path)):  # say which file, and where it was looked for
                raise images.BadImage(f"{image}: {exc}" + (
                    f" (looked for {Path(image).absolute()})"
                    if not Path(image).is_absolute() and not Path(image).exists() else "")
                ) from None
            raise
        return self._get_predictor().mask(loaded)[0]

    def predict_async(self, image):
        """``predict`` without waiting: a ``concurrent.futures.Future`` of the mask."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(8, thread_name_prefix="tfdeploy-client")
        return self._executor.submit(self.predict, image)

    async def apredict(self, image) -> Image.Image:
        """``predict`` for asyncio code: awaits the mask without blocking the loop."""
        import asyncio

        return await asyncio.wrap_future(self.predict_async(image))

    def predict_files(self, items: Iterable[str | Path], output_dir: str | Path = "masks",
                      overlay: bool = False, concurrency: int = 1) -> list[ImageResult]:
        """Files, directories and globs -> palette PNG masks under ``output_dir`` (what
        ``tfdeploy predict`` does); one ImageResult per image, failures included."""
        items = [str(i) for i in items]
        missing = missing_inputs(items)
        if missing:
            raise PredictError(f"no such file or directory: {', '.join(missing)}")
        if mistake := output_dir_mistake(Path(output_dir)):
            raise PredictError(f"output_dir: {mistake}")
        jobs = expand(items)
        clashes = overwrites(jobs, Path(output_dir), overlay)
        if clashes:
            raise PredictError("output_dir: nothing written, the masks would replace: "
                               + "; ".join(clashes) + ". Choose another output_dir.")
        predictor = self.predictor(Path(output_dir), overlay)
        return list(predictor.run(jobs, concurrency))

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self.transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
