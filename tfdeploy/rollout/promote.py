"""``promote``: compare a candidate version with the one a label points at, then move
the label; ``rollback``: move it back to where it pointed before.

The comparison sends the same sample images to both versions *by version number* and
judges the masks with ``client.compare.compare_masks``, the figures ``tfdeploy ui``
shows: pixel agreement per image and pooled, and per-class IoU between the two versions'
masks.  It is a gate against a broken or wrongly exported version (random weights, the
wrong checkpoint, a precision that flips classes), not a measure of quality: a better
model disagrees with the old one where the old one was wrong, which is why the default
threshold is below ``tfdeploy export``'s.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tfdeploy.client import images as image_files
from tfdeploy.client.base import ClientError
from tfdeploy.client.compare import compare_masks
from tfdeploy.client.grpc_transport import GrpcTransport
from tfdeploy.client.predict import PredictError, Predictor, expand, missing_inputs
from tfdeploy.client.tls import TlsConfig
from tfdeploy.errors import UserError
from tfdeploy.rollout import labels
from tfdeploy.tfs import protos, requests

#: per image, the share of pixels both versions must agree on (a fraction)
DEFAULT_MIN_AGREEMENT = 0.95
DEFAULT_LABEL = "stable"

Progress = Callable[[str], None]


@dataclass
class ImageAgreement:
    path: str
    agreement: float
    mean_iou: float
    iou: dict[int, float]


@dataclass
class PromoteResult:
    """What ``promote`` found and did.  ``previous`` is where the label pointed (None:
    it was not set, nothing was compared); ``moved`` whether it now points at
    ``version``."""

    model: str
    label: str
    version: int
    previous: int | None
    min_agreement: float
    images: list[ImageAgreement] = field(default_factory=list)
    #: all sample pixels pooled: agreement and per-class IoU
    agreement: float = 1.0
    iou: dict[int, float] = field(default_factory=dict)
    p50_ms: dict[int, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    moved: bool = False
    config_file: str | None = None

    @property
    def worst(self) -> list[ImageAgreement]:
        """Images below the threshold, worst first."""
        return sorted((i for i in self.images if i.agreement < self.min_agreement),
                      key=lambda i: i.agreement)

    def to_json(self) -> dict:
        return {"model": self.model, "label": self.label, "version": self.version,
                "previous": self.previous, "min_agreement": self.min_agreement,
                "agreement": self.agreement,
                "iou": {str(k): v for k, v in self.iou.items()},
                "p50_ms": {str(k): v for k, v in self.p50_ms.items()},
                "images": [{"path": i.path, "agreement": i.agreement,
                            "mean_iou": i.mean_iou,
                            "iou": {str(k): v for k, v in i.iou.items()}}
                           for i in self.images],
                "skipped": self.skipped, "moved": self.moved,
                "config_file": self.config_file}


class PromoteRefused(UserError):
    """The candidate's masks disagree with the serving version's: the label stays.
    Exit code 1 (the command ran; its answer is no).  ``result`` has the figures."""

    exit_code = 1

    def __init__(self, result: PromoteResult):
        worst = result.worst
        shown = ", ".join(f"{Path(i.path).name} {100 * i.agreement:.1f}%" for i in worst[:5])
        more = f" and {len(worst) - 5} more" if len(worst) > 5 else ""
        classes = sorted(result.iou.items(), key=lambda kv: kv[1])[:3]
        cls_text = ", ".join(f"class {c} IoU {v:.2f}" for c, v in classes)
        super().__init__(
            f"not promoted: version {result.version} agrees with version {result.previous} "
            f"(label {result.label}) on fewer than {100 * result.min_agreement:g}% of the "
            f"pixels of {len(worst)} of {len(result.images)} images: {shown}{more}; "
            f"classes that disagree most: {cls_text}; label {result.label} stays on "
            f"version {result.previous}")
        self.result = result


@dataclass
class _Target:
    address: str
    served: labels.ServedConfig
    #: gRPC over TLS (None: plain), for every call to ``address``
    tls: TlsConfig | None = None


def _target(server: str | None, name: str | None, config: str | Path | None,
            tls: TlsConfig | None = None) -> _Target:
    """The gRPC address, config and TLS of the server to change: ``server`` (HOST:PORT of
    its gRPC API; needs ``config``) or a server ``tfdeploy serve`` started (``name``, or
    the only one running).  TLS: ``tls`` when given (``--tls-*``), else the one the
    recorded server was started with (``serve --ssl-config-file``), as ``predict``."""
    from tfdeploy.runtime import manage
    from tfdeploy.runtime.tls import record_tls

    if server is not None:
        if name is not None:
            raise UserError("give --name or --server, not both", param="name")
        served = labels.served_config(None, config)
        return _Target(server, served,
                       tls or manage.client_tls([server], [server], None, "grpc"))
    record = manage.choose_server(name)
    if record is None:
        raise UserError("no running server tfdeploy serve started; give --server HOST:PORT "
                        "(its gRPC port) and --config FILE", param="name")
    address = labels.reload_address(record)
    return _Target(address, labels.served_config(record, config),
                   labels.reload_tls(record, address, tls or record_tls(record, "grpc")))


def label_version(address: str, model: str, label: str, timeout: float = 30,
                  tls: TlsConfig | None = None) -> int | None:
    """The version ``label`` points at, from the server (GetModelMetadata addressed by
    label answers with the version it resolved); None when the label is not set."""
    import grpc

    from tfdeploy.client.grpc_transport import channel as open_channel

    services = protos.module("tensorflow_serving.apis.prediction_service_pb2_grpc")
    request = requests.metadata_request(model)
    requests.set_model_spec(request.model_spec, model, label=label)
    channel = open_channel(address, tls)
    try:
        response = services.PredictionServiceStub(channel).GetModelMetadata(
            request, timeout=timeout)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.INVALID_ARGUMENT and "label" in (exc.details() or ""):
            return None
        raise UserError(labels.handshake_error(exc, address, tls) or
                        f"cannot ask {address} about label {label} of model {model}: "
                        f"{exc.code().name}: {exc.details()}") from None
    finally:
        channel.close()
    return int(response.model_spec.version.value)


def _states(transport: GrpcTransport, model: str) -> dict[int, str]:
    try:
        return transport.status(model)
    except ClientError as exc:
        raise UserError(f"cannot get the status of model {model!r} from "
                        f"{transport.address}: {exc}") from None


def _require_available(states: dict[int, str], model: str, version: int) -> None:
    if states.get(version) == "AVAILABLE":
        return
    listing = ", ".join(f"{v} {s}" for v, s in sorted(states.items())) or "none"
    state = states.get(version, "not loaded")
    raise UserError(f"version {version} of model {model} is {state} on the server "
                    f"(versions: {listing}); a label can only point at an AVAILABLE "
                    "version: let the server load it (model_version_policy "
                    "{ specific { versions: ... } } or { all {} } in the model config)")


def compare_versions(transport: GrpcTransport, model: str, baseline: int, candidate: int,
                     sample: Iterable[str | Path], progress: Progress | None = None
                     ) -> tuple[list[ImageAgreement], dict[str, str], object,
                                dict[int, float]]:
    """Both versions' masks of every sample image, compared: (per image, unreadable
    images -> why, the pooled MaskComparison, p50 latency in ms per version).  Requests
    alternate between the versions so both see the same load."""
    items = [str(s) for s in sample]
    missing = missing_inputs(items)
    if missing:
        raise UserError(f"no such file or directory: {', '.join(missing)}", param="sample")
    jobs = expand(items)
    if not jobs:
        raise UserError(f"no images in {', '.join(items)}", param="sample")
    try:
        predictors = {v: Predictor(transport, model, version=v, output_dir=None)
                      for v in (baseline, candidate)}
    except PredictError as exc:
        raise UserError(str(exc)) from None
    seconds: dict[int, list[float]] = {baseline: [], candidate: []}
    per_image, skipped, flat = [], {}, {baseline: [], candidate: []}
    for n, job in enumerate(jobs, 1):
        try:
            image = image_files.load(job.path)
        except image_files.BadImage as exc:
            skipped[str(job.path)] = str(exc)
            continue
        masks = {}
        for version, predictor in predictors.items():
            started = time.perf_counter()
            try:
                masks[version] = np.asarray(predictor.mask(image)[0])
            except ClientError as exc:
                raise UserError(f"version {version} failed on {job.path}: {exc}") from None
            seconds[version].append(time.perf_counter() - started)
            flat[version].append(masks[version].ravel())
        c = compare_masks(masks[baseline], masks[candidate])
        per_image.append(ImageAgreement(str(job.path), c.agreement, c.mean_iou, c.iou))
        if progress:
            progress(f"[{n}/{len(jobs)}] {job.path.name}: agreement "
                     f"{100 * c.agreement:.2f}%, mean IoU {c.mean_iou:.3f}")
    if not per_image:
        raise UserError("none of the sample images could be read: " + "; ".join(
            f"{p}: {why}" for p, why in skipped.items()), param="sample")
    pooled = compare_masks(np.concatenate(flat[baseline])[None],
                           np.concatenate(flat[candidate])[None])
    p50 = {v: round(1000 * statistics.median(s), 1) for v, s in seconds.items()}
    return per_image, skipped, pooled, p50


def promote(model: str, version: int, *, label: str = DEFAULT_LABEL,
            sample: Iterable[str | Path] | None = None,
            min_agreement: float = DEFAULT_MIN_AGREEMENT, server: str | None = None,
            name: str | None = None, config: str | Path | None = None,
            dry_run: bool = False, progress: Progress | None = None,
            tls: TlsConfig | None = None) -> PromoteResult:
    """Point ``label`` of ``model`` at ``version`` if its masks agree with the version the
    label points at now; see ``tfdeploy.api.promote``."""
    if not 0 <= min_agreement <= 1:
        raise UserError("must be a fraction between 0 and 1", param="min_agreement")
    target = _target(server, name, config, tls)
    labels.model_entry(target.served.config, model)
    transport = GrpcTransport(target.address, tls=target.tls)
    try:
        states = _states(transport, model)
        _require_available(states, model, version)
        current = label_version(target.address, model, label, tls=target.tls)
        result = PromoteResult(model, label, version, current, min_agreement,
                               config_file=str(target.served.file or "") or None)
        if current == version:
            if progress:
                progress(f"label {label} already points at version {version}")
            return result
        if current is not None:
            _require_available(states, model, current)
            from tfdeploy.demo import DEMO_IMAGES

            if progress:
                progress(f"comparing version {version} with version {current} "
                         f"(label {label}) on the sample images")
            per_image, result.skipped, pooled, result.p50_ms = compare_versions(
                transport, model, current, version, list(sample or [DEMO_IMAGES]), progress)
            result.images, result.agreement, result.iou = per_image, pooled.agreement, \
                pooled.iou
            if result.worst:
                raise PromoteRefused(result)
        elif progress:
            progress(f"label {label} is not set yet: nothing to compare version "
                     f"{version} with")
        if dry_run:
            return result
        labels.move_label(target.served, target.address, model, label, version,
                          tls=target.tls)
        if current is not None:
            labels.push_previous(target.served.key, model, label, current)
        result.moved = True
        return result
    finally:
        transport.close()


def rollback(model: str, *, label: str = DEFAULT_LABEL, server: str | None = None,
             name: str | None = None, config: str | Path | None = None,
             tls: TlsConfig | None = None) -> dict:
    """Point ``label`` back at the version it pointed at before the last ``promote``;
    see ``tfdeploy.api.rollback``."""
    target = _target(server, name, config, tls)
    labels.model_entry(target.served.config, model)
    back = labels.previous(target.served.key, model, label)
    if back is None:
        raise UserError(f"no promote of label {label} of model {model} is recorded for "
                        "this server: nothing to roll back to")
    transport = GrpcTransport(target.address, tls=target.tls)
    try:
        _require_available(_states(transport, model), model, back)
        current = label_version(target.address, model, label, tls=target.tls)
    finally:
        transport.close()
    labels.move_label(target.served, target.address, model, label, back, tls=target.tls)
    labels.pop_previous(target.served.key, model, label)
    return {"model": model, "label": label, "version": back, "from": current,
            "config_file": str(target.served.file) if target.served.file else None}
