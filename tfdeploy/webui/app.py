"""The ``tfdeploy ui`` web app: the page, and a small JSON API that proxies one TF Serving
REST endpoint through the client library.

Why a proxy: the browser talks only to this app (same origin), so the official
tensorflow_model_server needs no CORS, and masks come from ``Predictor`` exactly as
``tfdeploy predict`` gets them (signature choice, EXIF orientation, mask size checks).
Uploads live in memory for one request and are never written to disk.

API (all JSON; errors are ``{"error": "<plain words>", "code": "<TF Serving code>"}``
with an HTTP status that says whose fault it was):

- ``GET  /api/info``: the server address, its models, the class names.
- ``GET  /api/status?model=M``: versions with their states, and labels where known.
- ``POST /api/predict?model=M&select=S`` (body: the image file): the mask.
- ``POST /api/compare?model=M&a=S&b=S`` (body: the image file): both masks, the
  difference map, pixel agreement and per-class IoU (``client.compare``).
- ``GET  /api/requests?offset=N``: a page of the request log's requests, newest first
  (only with a request log: ``requests.py``); ``GET /api/requests/item?id=I``: one
  request's images and the masks its logged response holds;
  ``POST /api/requests/rerun?id=I&select=S``: its images through the server now, each
  mask compared with the logged one (agreement, per-class IoU: ``client.compare``).
  The log is only read.

``select`` is empty (the latest version), a version number, or a label name.
"""

from __future__ import annotations

import base64
import io
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import numpy as np
from PIL import Image
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from tfdeploy.client import images, request_log
from tfdeploy.client.base import ClientError
from tfdeploy.client.compare import compare_masks, difference_map
from tfdeploy.client.predict import PredictError, Predictor
from tfdeploy.client.rest_transport import RestTransport
from tfdeploy.client.tls import TlsConfig
from tfdeploy.palette import voc_colormap
from tfdeploy.tfs.codes import Code
from tfdeploy.webui.requests import PAGE, RequestLogView

STATIC = Path(__file__).resolve().parent / "static"
#: Uploads above this are refused before anything is sent (``--max-upload-mb``).
DEFAULT_MAX_UPLOAD_MB = 32


class UiError(Exception):
    """A request the page cannot complete: ``message`` in plain words for the page,
    ``status`` the HTTP status, ``code`` TF Serving's code name when the server said it."""

    def __init__(self, message: str, status: int = 400, code: str = "") -> None:
        super().__init__(message)
        self.message, self.status, self.code = message, status, code


class _LabelledRest(RestTransport):
    """The REST transport addressing a version label (``/labels/NAME``), which
    tensorflow_model_server's REST API accepts wherever it accepts ``/versions/N``."""

    def __init__(self, address: str, label: str, timeout: float,
                 tls: TlsConfig | None = None) -> None:
        super().__init__(address, timeout, tls)
        self.label = label

    def _path(self, model: str, version: int | None) -> str:  # type: ignore[override]
        return f"/v1/models/{quote(model, safe='')}/labels/{quote(self.label, safe='')}"

    def label_version(self, model: str) -> int | None:
        """The version the label points at: GetModelMetadata resolves labels and names
        the version (GetModelStatus ignores labels and lists every version, as in
        tensorflow_model_server)."""
        body = self._http("GET", self._path(model, None) + "/metadata")
        try:
            return int(body["model_spec"]["version"])
        except (KeyError, TypeError, ValueError):
            return None


def parse_select(select: str) -> tuple[int | None, str | None]:
    """``""``/``latest`` -> the latest version; digits -> that version; else a label."""
    select = select.strip()
    if select in ("", "latest"):
        return None, None
    if select.isdigit():
        return int(select), None
    return None, select


def _png_b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return base64.b64encode(buf.getvalue()).decode()


def _hex(rgb) -> str:
    return "#" + "".join(f"{int(c):02x}" for c in rgb)


@dataclass
class Backend:
    """What the app knows of its model server, and the Predictors it reuses (one per
    model and version or label: each read the model's metadata once)."""

    address: str
    models: list[str]
    classes: list[str] = field(default_factory=list)
    labels: dict[str, dict[str, int]] = field(default_factory=dict)
    timeout: float = 30.0
    max_upload: int = DEFAULT_MAX_UPLOAD_MB << 20
    #: request logs the page browses (``--request-log``, or a recorded server's)
    request_logs: list[Path] = field(default_factory=list)
    #: HTTPS to the server (a TLS server ``tfdeploy serve`` started; None: plain HTTP)
    tls: TlsConfig | None = None
    #: Name classes as the model itself says (its ``class_names`` signature, read once
    #: per model version), falling back to ``classes``; False when the user gave names.
    served_names: bool = True

    def __post_init__(self) -> None:
        self._predictors: dict[tuple[str, int | None, str | None], Predictor] = {}
        self._lock = threading.Lock()
        self.log_view = RequestLogView(self.request_logs) if self.request_logs else None

    def class_name(self, index: int, served: dict[int, str] | None = None) -> str:
        if self.served_names and served and index in served:
            return served[index]
        return self.classes[index] if index < len(self.classes) else f"class {index}"

    def _transport(self, label: str | None) -> RestTransport:
        if label:
            return _LabelledRest(self.address, label, self.timeout, self.tls)
        return RestTransport(self.address, self.timeout, self.tls)

    # -- errors in plain words ------------------------------------------------------------

    def _server_error(self, exc: ClientError | PredictError, model: str) -> UiError:
        if isinstance(exc, PredictError):
            if exc.cause in ("no_server", "wrong_transport"):
                return UiError(f"No model server answers at {self.address} (is it running, "
                               f"and is this its REST port?). {exc.message}", 502,
                               "UNAVAILABLE")
            return UiError(exc.message, 502)
        code = exc.code
        if code == Code.UNAVAILABLE:
            return UiError(f"No model server answers at {self.address}: {exc.message}",
                           502, code.name)
        if code == Code.NOT_FOUND:
            return UiError(f"The server has no model {model!r} (or not that version): "
                           f"{exc.message}", 404, code.name)
        if code == Code.INVALID_ARGUMENT and "larger than" in exc.message:
            return UiError(f"Image too large: {exc.message}", 413, code.name)
        if code == Code.INVALID_ARGUMENT:
            return UiError(f"The server refused the request ({code.name}): {exc.message}",
                           400, code.name)
        return UiError(f"The model server failed ({code.name}, HTTP {code.http}): "
                       f"{exc.message}", 502, code.name)

    # -- calls ----------------------------------------------------------------------------

    def status(self, model: str) -> dict:
        try:
            states = self._transport(None).status(model)
        except ClientError as exc:
            raise self._server_error(exc, model) from None
        return {"model": model,
                "versions": [{"version": v, "state": s} for v, s in sorted(states.items())],
                "labels": dict(sorted(self.labels.get(model, {}).items()))}

    def _predictor(self, model: str, select: str) -> Predictor:
        version, label = parse_select(select)
        key = (model, version, label)
        with self._lock:
            found = self._predictors.get(key)
        if found is not None:
            return found
        try:
            predictor = Predictor(self._transport(label), model, version=version,
                                  output_dir=None)
        except PredictError as exc:
            raise self._server_error(exc, model) from None
        with self._lock:
            return self._predictors.setdefault(key, predictor)

    def _used(self, model: str, select: str) -> str:
        """What answered, in words: ``version 2``, ``label stable (version 2)``,
        ``latest (version 2)``; the version comes from the server's status."""
        version, label = parse_select(select)
        if version is not None:
            return f"version {version}"
        try:
            if label:
                found = _LabelledRest(self.address, label, self.timeout,
                                      self.tls).label_version(model)
                number = f" (version {found})" if found is not None else ""
            else:
                states = self._transport(None).status(model)
                live = [v for v, s in states.items() if s == "AVAILABLE"]
                number = f" (version {max(live)})" if live else ""
        except ClientError:
            number = ""
        return (f"label {label}" if label else "latest") + number

    def too_large(self, size: int) -> UiError:
        return UiError(f"Image too large: the file is {size / 2**20:.3g} MB, this page "
                       f"takes at most {self.max_upload / 2**20:.3g} MB "
                       "(tfdeploy ui --max-upload-mb)", 413)

    def decode(self, raw: bytes) -> images.LoadedImage:
        if len(raw) > self.max_upload:
            raise self.too_large(len(raw))
        if not raw:
            raise UiError("The file is empty.", 400)
        try:
            return images.decode(raw)
        except images.BadImage as exc:
            raise UiError(f"Cannot read this file as an image: {exc}", 400) from None

    def _mask(self, model: str, select: str, image: images.LoadedImage
              ) -> tuple[Image.Image, bytes | None, float]:
        predictor = self._predictor(model, select)
        started = time.perf_counter()
        try:
            mask, png = predictor.mask(image)
        except ClientError as exc:
            raise self._server_error(exc, model) from None
        return mask, png, time.perf_counter() - started

    def _describe(self, model: str, select: str, mask: Image.Image, png: bytes | None,
                  seconds: float) -> dict:
        return {"model": model, "select": select, "used": self._used(model, select),
                "latency_ms": round(seconds * 1000, 1),
                **self._mask_views(mask, png, self._served(model, select))}

    def _served(self, model: str, select: str, ask: bool = True) -> dict[int, str]:
        """The class names ``model`` serves (its ``class_names`` signature, read once per
        model and version or label); empty when it serves none or cannot be asked.
        ``ask=False``: only names already read (viewing a logged request must not add a
        request to the log being viewed)."""
        if not self.served_names or not model:
            return {}
        if not ask:
            with self._lock:
                known = [p for (m, _, _), p in self._predictors.items() if m == model]
            return known[0].known_class_names if known else {}
        try:
            return self._predictor(model, select).class_names
        except UiError:
            return {}

    def _mask_views(self, mask: Image.Image, png: bytes | None = None,
                    served: dict[int, str] | None = None) -> dict:
        """The mask as the page shows it: alone (palette PNG), as an overlay (RGBA, clear
        where background), and its classes (named by ``served``, else the page's list)
        with their share of pixels."""
        index = np.asarray(mask)
        colours = voc_colormap(256)
        overlay = np.zeros((*index.shape, 4), np.uint8)
        overlay[..., :3] = colours[index]
        overlay[..., 3] = np.where(index > 0, 255, 0)
        counts = np.bincount(index.ravel(), minlength=1)
        total = int(index.size)
        classes = [{"index": int(c), "name": self.class_name(int(c), served),
                    "color": _hex(colours[c]), "pixels": int(n), "share": n / total}
                   for c, n in enumerate(counts) if n]
        return {"width": mask.width, "height": mask.height,
                "mask_png": (base64.b64encode(png).decode() if png is not None
                             else _png_b64(mask)),
                "overlay_png": _png_b64(Image.fromarray(overlay, "RGBA")),
                "classes": classes}

    def predict(self, model: str, select: str, raw: bytes) -> dict:
        image = self.decode(raw)
        mask, png, seconds = self._mask(model, select, image)
        return self._describe(model, select, mask, png, seconds)

    def compare(self, model: str, a: str, b: str, raw: bytes) -> dict:
        image = self.decode(raw)
        mask_a, png_a, sec_a = self._mask(model, a, image)
        mask_b, png_b, sec_b = self._mask(model, b, image)
        result = compare_masks(mask_a, mask_b)
        iou = [{"index": c, "name": self.class_name(c, self._served(model, b)), "iou": v,
                "color": _hex(voc_colormap(256)[c]),
                "pixels_a": result.pixels_a[c], "pixels_b": result.pixels_b[c]}
               for c, v in result.iou.items()]
        return {"a": self._describe(model, a, mask_a, png_a, sec_a),
                "b": self._describe(model, b, mask_b, png_b, sec_b),
                "agreement": result.agreement, "mean_iou": result.mean_iou, "iou": iou,
                "diff_png": _png_b64(Image.fromarray(difference_map(mask_a, mask_b)))}


    # -- the request log ----------------------------------------------------------------

    def _log_view(self) -> RequestLogView:
        if self.log_view is None:
            raise UiError("No request log: start tfdeploy ui with --request-log PATH, or "
                          "--name a server whose model config has a logging_config.", 404)
        return self.log_view

    def requests(self, offset: int) -> dict:
        return self._log_view().page(offset, PAGE)

    def _logged(self, entry_id: str) -> tuple[request_log.Entry, list]:
        try:
            entry = self._log_view().entry(entry_id)
            return entry, request_log.logged_images(entry)
        except request_log.LogError as exc:
            raise UiError(str(exc), 404) from None

    def request_item(self, entry_id: str) -> dict:
        """A logged request's images, each with the mask of the logged response."""
        entry, shown = self._logged(entry_id)
        out = []
        for item in shown:
            view: dict = {"note": item.note, "image_png": None, "mask": None}
            if item.picture is not None:
                view["image_png"] = _png_b64(item.picture)
                view["width"], view["height"] = item.picture.size
            if item.mask is not None:
                view["mask"] = self._mask_views(item.mask,
                                                served=self._served(entry.model, "",
                                                                    ask=False))
            out.append(view)
        return {"id": entry_id, "model": entry.model, "version": entry.version,
                "signature": entry.signature, "images": out}

    def rerun(self, entry_id: str, select: str) -> dict:
        """The logged request's images through the server now (``select``: empty for
        the latest version), each new mask compared with the logged one by
        ``compare_masks``, the figures ``tfdeploy promote`` decides on."""
        entry, shown = self._logged(entry_id)
        if not entry.model:
            raise UiError("This logged request names no model.", 400)
        results = []
        for item in shown:
            if item.picture is None or item.mask is None:
                results.append({"note": item.note or "nothing to compare", "agreement": None})
                continue
            try:  # the bytes as they were logged: the same request again
                image = (images.decode(item.encoded) if item.encoded is not None
                         else images.from_any(item.picture))
            except images.BadImage as exc:
                raise UiError(f"Cannot read the logged image: {exc}", 400) from None
            mask, png, seconds = self._mask(entry.model, select, image)
            try:
                result = compare_masks(item.mask, mask)
            except ValueError as exc:
                raise UiError(f"The logged mask and the new one cannot be compared: {exc}",
                              500) from None
            results.append({
                "agreement": result.agreement, "mean_iou": result.mean_iou,
                "iou": [{"index": c, "name": self.class_name(c, self._served(entry.model,
                                                                             select)),
                         "iou": v,
                         "color": _hex(voc_colormap(256)[c]),
                         "pixels_a": result.pixels_a[c], "pixels_b": result.pixels_b[c]}
                        for c, v in result.iou.items()],
                "now": self._describe(entry.model, select, mask, png, seconds),
                "diff_png": _png_b64(Image.fromarray(difference_map(item.mask, mask)))})
        return {"id": entry_id, "model": entry.model, "logged_version": entry.version,
                "results": results}


def _error(exc: UiError) -> JSONResponse:
    return JSONResponse({"error": exc.message, "code": exc.code}, exc.status)


def create_app(backend: Backend) -> Starlette:
    """The ASGI app serving the page and its API for ``backend``."""

    async def index(request: Request) -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def info(request: Request) -> JSONResponse:
        return JSONResponse({"server": backend.address, "models": backend.models,
                             "model": backend.models[0] if backend.models else "",
                             "classes": backend.classes,
                             "max_upload_mb": backend.max_upload / 2**20,
                             "request_logs": [str(p) for p in backend.request_logs]})

    def _model(request: Request) -> str:
        model = request.query_params.get("model", "").strip()
        if not model:
            raise UiError("No model chosen.", 400)
        return model

    async def _body(request: Request) -> bytes:
        """The upload, refused as soon as it passes the limit (never read whole first)."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > backend.max_upload:
            raise backend.too_large(int(declared))
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > backend.max_upload:
                raise backend.too_large(size)
            chunks.append(chunk)
        return b"".join(chunks)

    async def status(request: Request) -> JSONResponse:
        try:
            return JSONResponse(await run_in_threadpool(backend.status, _model(request)))
        except UiError as exc:
            return _error(exc)

    async def predict(request: Request) -> JSONResponse:
        try:
            model, raw = _model(request), await _body(request)
            select = request.query_params.get("select", "")
            return JSONResponse(await run_in_threadpool(backend.predict, model, select, raw))
        except UiError as exc:
            return _error(exc)

    async def compare(request: Request) -> JSONResponse:
        try:
            model, raw = _model(request), await _body(request)
            q = request.query_params
            return JSONResponse(await run_in_threadpool(
                backend.compare, model, q.get("a", ""), q.get("b", ""), raw))
        except UiError as exc:
            return _error(exc)

    async def requests(request: Request) -> JSONResponse:
        offset = request.query_params.get("offset", "0")
        try:
            return JSONResponse(await run_in_threadpool(
                backend.requests, int(offset) if offset.isdigit() else 0))
        except UiError as exc:
            return _error(exc)

    async def request_item(request: Request) -> JSONResponse:
        try:
            return JSONResponse(await run_in_threadpool(
                backend.request_item, request.query_params.get("id", "")))
        except UiError as exc:
            return _error(exc)

    async def rerun(request: Request) -> JSONResponse:
        q = request.query_params
        try:
            return JSONResponse(await run_in_threadpool(
                backend.rerun, q.get("id", ""), q.get("select", "")))
        except UiError as exc:
            return _error(exc)

    return Starlette(routes=[
        Route("/", index),
        Route("/api/info", info),
        Route("/api/status", status),
        Route("/api/predict", predict, methods=["POST"]),
        Route("/api/compare", compare, methods=["POST"]),
        Route("/api/requests", requests),
        Route("/api/requests/item", request_item),
        Route("/api/requests/rerun", rerun, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ])
