"""Manager: turns aspired versions into loaded Servables, availability first.

When the Source aspires a new version, the Manager loads it (and replays warmup) while the
old version keeps serving, and unloads the old one only once the new one is AVAILABLE: the
"availability preserving" policy of TF Serving, so a swap fails no request, and a new
version that fails to load leaves the old one serving (the failed one shows its error in
the model's status).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tfdeploy.tfs.codes import Code, StatusError

if TYPE_CHECKING:  # annotations only: servable.py imports TensorFlow
    from tfdeploy.serving.servable import Servable

log = logging.getLogger("tfdeploy.serving.manager")

# ModelVersionStatus.State values of get_model_status.proto
START, LOADING, AVAILABLE, UNLOADING, END = 10, 20, 30, 40, 50


@dataclass
class VersionState:
    version: int
    path: Path
    state: int = START
    servable: Servable | None = None
    error: tuple[Code, str] | None = None
    failures: int = 0
    retry_at: float = 0.0  # monotonic time of the next load attempt after a failure


@dataclass
class ModelState:
    name: str
    versions: dict[int, VersionState] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)


LoaderFactory = Callable[[str, int, Path], object]  # -> object with .load() -> Servable


def _to_unload(model: ModelState, aspired: dict[int, Path]) -> list[VersionState]:
    """The serving versions that may leave now: TF Serving's availability preserving policy.

    Versions no longer aspired leave when nothing is aspired any more, or once an aspired
    version is AVAILABLE.  Until then (the new version is loading, or failed to load: a
    corrupt directory, a truncated variables file) the newest of them keeps serving, so a
    bad version can never take a good one down."""
    unaspired = sorted((vs for v, vs in model.versions.items()
                        if v not in aspired and vs.state == AVAILABLE),
                       key=lambda vs: vs.version)
    aspired_serving = any(vs.state == AVAILABLE for v, vs in model.versions.items()
                          if v in aspired)
    if not aspired or aspired_serving:
        return unaspired
    return unaspired[:-1]


class Manager:
    def __init__(self, loader_factory: LoaderFactory, max_load_retries: int = 5,
                 retry_interval: float = 60.0):
        """A failed load is tried again ``max_load_retries`` times, ``retry_interval``
        seconds apart (tensorflow_model_server's --max_num_load_retries and
        --load_retry_interval_micros), while the version stays aspired."""
        self._loader_factory = loader_factory
        self._max_retries, self._retry_interval = max_load_retries, retry_interval
        self._models: dict[str, ModelState] = {}
        self._lock = threading.RLock()
        self._load_lock = threading.Lock()  # one load/unload sequence at a time

    # -- the Source side -----------------------------------------------------------------
    def set_aspired_versions(self, name: str, aspired: dict[int, Path]) -> None:
        with self._load_lock:
            with self._lock:
                model = self._models.setdefault(name, ModelState(name))
                to_load = []
                for version, path in aspired.items():
                    current = model.versions.get(version)
                    if current is None or (current.state == END and current.error is None):
                        # new, or unloaded earlier and aspired again
                        model.versions[version] = VersionState(version, path, LOADING)
                        to_load.append(model.versions[version])
                    elif (current.state == END and current.failures <= self._max_retries
                          and time.monotonic() >= current.retry_at):
                        current.state, current.path = LOADING, path  # retry a failed load
                        to_load.append(current)
            for vs in sorted(to_load, key=lambda v: v.version):
                self._load(name, vs)
            with self._lock:
                leaving = _to_unload(model, aspired)
                for vs in leaving:
                    vs.state = UNLOADING
            for vs in leaving:
                log.info("unloading %s version %d", name, vs.version)
                with self._lock:
                    servable, vs.servable = vs.servable, None
                    vs.state = END
                if servable is not None:
                    servable.close()  # in-flight requests keep their own reference

    def _load(self, name: str, vs: VersionState) -> None:
        log.info("loading %s version %d from %s", name, vs.version, vs.path)
        try:
            servable = self._loader_factory(name, vs.version, vs.path).load()
        except Exception as exc:  # a broken version must not stop the server
            message = getattr(exc, "message", None) or str(exc).strip().splitlines()[0]
            with self._lock:
                vs.failures += 1
                vs.retry_at = time.monotonic() + self._retry_interval
                vs.state, vs.error = END, (Code.INTERNAL, f"load failed: {message}")
            retries_left = self._max_retries - vs.failures + 1
            log.error("failed to load %s version %d: %s (%s)", name, vs.version, message,
                      f"will retry in {self._retry_interval:g}s" if retries_left > 0
                      else "giving up")
            return
        with self._lock:
            vs.servable, vs.state, vs.error = servable, AVAILABLE, None
        log.info("%s version %d is AVAILABLE", name, vs.version)

    def set_labels(self, name: str, labels: dict[str, int]) -> None:
        with self._lock:
            self._models.setdefault(name, ModelState(name)).labels = dict(labels)

    def labels(self, name: str) -> dict[str, int]:
        with self._lock:
            model = self._models.get(name)
            return dict(model.labels) if model else {}

    def is_available(self, name: str, version: int) -> bool:
        with self._lock:
            model = self._models.get(name)
            vs = model.versions.get(version) if model else None
            return vs is not None and vs.state == AVAILABLE

    def retain_models(self, names: set[str]) -> None:
        """Unload models that are no longer configured."""
        for name in [n for n in self.model_names() if n not in names]:
            self.set_aspired_versions(name, {})
            with self._lock:
                self._models.pop(name, None)

    # -- the request side ----------------------------------------------------------------
    def model_names(self) -> list[str]:
        with self._lock:
            return sorted(self._models)

    def _model(self, name: str) -> ModelState:
        if not name:
            raise StatusError(Code.INVALID_ARGUMENT, "ModelSpec has no name specified.")
        model = self._models.get(name)
        if model is None:
            raise StatusError(Code.NOT_FOUND,
                               f"Servable not found for request: Latest({name})")
        return model

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> int:
        with self._lock:
            if label:  # labels are looked up first, as TF Serving does: INVALID_ARGUMENT
                model = self._models.get(name)
                if model is None or label not in model.labels:
                    raise StatusError(Code.INVALID_ARGUMENT,
                                      f"Unrecognized servable version label: {label}")
                return model.labels[label]
            model = self._model(name)
            if version is not None:
                return version
            available = [v for v, vs in model.versions.items() if vs.state == AVAILABLE]
            if not available:
                raise StatusError(Code.NOT_FOUND,
                                   f"Servable not found for request: Latest({name})")
            return max(available)

    def handle(self, name: str, version: int | None = None,
               label: str | None = None) -> Servable:
        with self._lock:
            number = self.resolve(name, version, label)
            vs = self._model(name).versions.get(number)
            if vs is None or vs.servable is None:
                raise StatusError(Code.NOT_FOUND,
                                   f"Servable not found for request: Specific({name}, {number})")
            return vs.servable

    def statuses(self, name: str, version: int | None = None,
                 label: str | None = None) -> list[VersionState]:
        with self._lock:
            model = self._model(name)
            if label or version is not None:
                number = self.resolve(name, version, label)
                if number not in model.versions:
                    raise StatusError(Code.NOT_FOUND,
                                       f"Could not find version {number} of model {name}")
                return [model.versions[number]]
            return [model.versions[v] for v in sorted(model.versions, reverse=True)]

    def unload_all(self) -> None:
        for name in self.model_names():
            self.set_aspired_versions(name, {})
