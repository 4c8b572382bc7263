"""Manager: turns aspired versions into loaded Servables, availability first.

When the Source aspires a new version, the Manager loads it (and replays warmup) while the
old version keeps serving, and unloads the old one only once the new one is AVAILABLE: the
"availability preserving" policy of TF Serving, so a swap fails no request, and a new
version that fails to load leaves the old one serving (the failed one shows its error in
the model's status).

Loads run on loader threads (``--num_load_threads``; 0 means one, loading in the order
versions were aspired) and unloads on unload threads (``--num_unload_threads``), never on
the thread that aspired them: a file-system poll, a config reload or a ModelService call
only records what it wants, so a slow load never holds up status calls, another model's
requests or the next poll.  Each model has its own lock for its bookkeeping; the shared
lock guards the state tables and is never held while TensorFlow works.  A load that
outlives ``--load_timeout_seconds`` (0 = no bound) is marked failed and abandoned.
"""

from __future__ import annotations

import logging
import queue
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
    #: set when the load in progress is no longer wanted (timed out, model removed): the
    #: loader stops where it can (between warmup records) and its result is dropped
    abandon: threading.Event = field(default_factory=threading.Event)


@dataclass
class ModelState:
    name: str
    versions: dict[int, VersionState] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)
    aspired: dict[int, Path] = field(default_factory=dict)  # the Source's latest word
    lock: threading.Lock = field(default_factory=threading.Lock)  # this model's bookkeeping


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


class _Workers:
    """``count`` daemon threads running jobs in the order they were given.

    Daemon threads: a load TensorFlow cannot interrupt must not keep the process alive
    at exit."""

    def __init__(self, count: int, name: str):
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._pending = 0  # jobs submitted and not finished
        self._idle = threading.Condition()
        self._threads = [threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True)
                         for i in range(max(1, count))]
        for t in self._threads:
            t.start()

    def submit(self, job: Callable[[], None]) -> None:
        with self._idle:
            self._pending += 1
        self._jobs.put(job)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """True once every job submitted so far has finished (False on timeout)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def busy(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job()
            except Exception:  # a job's failure must not end the thread
                log.exception("load/unload job failed")
            with self._idle:
                self._pending -= 1
                self._idle.notify_all()
            # Hold nothing while idle: a servable a finished job still referenced would
            # otherwise be freed (its TF session closed) whenever this thread next wakes,
            # at worst while the interpreter shuts down, which TensorFlow aborts on.
            job = None

    def stop(self, wait: float = 5.0) -> None:
        """End the threads once their queued jobs are done; wait up to ``wait`` s for
        them (a load TensorFlow is still busy with is left behind)."""
        for _ in self._threads:
            self._jobs.put(None)
        deadline = time.monotonic() + wait
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))


class _Changes(threading.Condition):
    """The manager's "state changed" condition, counting its notifications: a watcher that
    must not block on it (the gRPC Health Watch, on the event loop) compares counts."""

    def __init__(self, lock) -> None:
        super().__init__(lock)
        self.count = 0

    def notify_all(self) -> None:
        self.count += 1
        super().notify_all()


class Manager:
    def __init__(self, loader_factory: LoaderFactory, max_load_retries: int = 5,
                 retry_interval: float = 60.0, num_load_threads: int = 0,
                 num_unload_threads: int = 0, load_timeout: float = 0.0):
        """A failed load is tried again ``max_load_retries`` times, ``retry_interval``
        seconds apart (tensorflow_model_server's --max_num_load_retries and
        --load_retry_interval_micros), while the version stays aspired.  ``load_timeout``
        > 0 bounds each load attempt (seconds)."""
        self._loader_factory = loader_factory
        self._max_retries, self._retry_interval = max_load_retries, retry_interval
        self._load_timeout = load_timeout
        self._models: dict[str, ModelState] = {}
        self._lock = threading.RLock()  # the state tables; never held during a load
        self._changed = _Changes(self._lock)  # notified on every state change
        self._loaders = _Workers(num_load_threads, "loader")
        self._load_threads: set[threading.Thread] = set()  # loads with a timeout of their own
        self._unloaders = _Workers(num_unload_threads, "unloader")

    # -- the Source side -----------------------------------------------------------------
    def set_aspired_versions(self, name: str, aspired: dict[int, Path]) -> None:
        """Record the versions the Source wants and start their loads and unloads on the
        worker threads; returns at once."""
        with self._lock:
            model = self._models.setdefault(name, ModelState(name))
        with model.lock:
            with self._lock:
                model.aspired = dict(aspired)
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
                        current.abandon = threading.Event()
                        to_load.append(current)
                if to_load:
                    self._changed.notify_all()
            for vs in sorted(to_load, key=lambda v: v.version):
                self._loaders.submit(lambda vs=vs: self._load(model, vs))
            self._unload_leaving(model)

    def _unload_leaving(self, model: ModelState) -> None:
        """Hand the versions that may leave now to the unload threads.  Their servables
        are out of the tables at once (no new request gets them); requests in flight keep
        their own reference and finish."""
        with self._lock:
            leaving = [(vs, vs.servable) for vs in _to_unload(model, model.aspired)]
            for vs, _ in leaving:
                vs.state, vs.servable = UNLOADING, None
            if leaving:
                self._changed.notify_all()
        for vs, servable in leaving:
            self._unloaders.submit(lambda vs=vs, s=servable: self._unload(model.name, vs, s))

    def _unload(self, name: str, vs: VersionState, servable: Servable | None) -> None:
        log.info("unloading %s version %d", name, vs.version)
        if servable is not None:
            servable.close()
        with self._lock:
            if vs.state == UNLOADING:
                vs.state = END
            self._changed.notify_all()

    def _load(self, model: ModelState, vs: VersionState) -> None:
        """One load attempt, on a loader thread; then the unloads it makes possible."""
        with self._lock:
            if vs.state != LOADING:  # its model was removed while this waited its turn
                return
        name = model.name
        log.info("loading %s version %d from %s", name, vs.version, vs.path)
        servable, error = self._attempt(name, vs)
        with self._lock:
            wanted = vs.state == LOADING  # else its model went away meanwhile
            if wanted and error is None:
                vs.servable, vs.state, vs.error = servable, AVAILABLE, None
            elif wanted:
                vs.failures += 1
                vs.retry_at = time.monotonic() + self._retry_interval
                vs.state, vs.error = END, error
            self._changed.notify_all()
        if not wanted:  # abandoned meanwhile: what it made is not served
            if servable is not None:
                servable.close()
            return
        if error is not None:
            retries_left = self._max_retries - vs.failures + 1
            log.error("failed to load %s version %d: %s (%s)", name, vs.version,
                      error[1].removeprefix("load failed: "),
                      f"will retry in {self._retry_interval:g}s" if retries_left > 0
                      else "giving up")
            return
        log.info("%s version %d is AVAILABLE", name, vs.version)
        with model.lock:
            self._unload_leaving(model)

    def _attempt(self, name: str, vs: VersionState) -> tuple[Servable | None,
                                                             tuple[Code, str] | None]:
        """(servable, None) or (None, (code, message)).  With a load timeout the load runs
        on a thread of its own that this one waits for at most that long; past it the
        attempt fails and that thread is left to finish (TensorFlow cannot be
        interrupted; it stops between warmup records) and drop what it made."""
        result: list = []
        gave_up = []  # non-empty once the waiting thread stopped waiting

        def work() -> None:
            try:
                loader = self._loader_factory(name, vs.version, vs.path)
                loader.abandon = vs.abandon
                outcome = (loader.load(), None)
            except Exception as exc:  # a broken version must not stop the server
                message = getattr(exc, "message", None) or str(exc).strip().splitlines()[0]
                outcome = (None, (Code.INTERNAL, f"load failed: {message}"))
            with self._lock:
                result.append(outcome)
                late = bool(gave_up)
            if late and outcome[0] is not None:
                outcome[0].close()  # too late: nobody will serve it
                log.info("abandoned load of %s version %d finished; dropped", name,
                         vs.version)

        if self._load_timeout <= 0:
            work()
            return result[0]
        worker = threading.Thread(target=work, name=f"load-{name}-{vs.version}", daemon=True)
        self._load_threads.add(worker)
        worker.start()
        worker.join(self._load_timeout)
        with self._lock:
            if result:
                return result[0]
            gave_up.append(True)
            vs.abandon.set()
        log.error("load of %s version %d did not finish within --load_timeout_seconds=%g; "
                  "abandoned", name, vs.version, self._load_timeout)
        return None, (Code.DEADLINE_EXCEEDED,
                      f"load failed: not loaded within --load_timeout_seconds="
                      f"{self._load_timeout:g}; abandoned")

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """True once every load and unload asked for so far has finished (a load may ask
        for unloads, so both are checked until neither has work)."""
        deadline = time.monotonic() + timeout
        while True:
            left = max(0.0, deadline - time.monotonic())
            if not (self._loaders.wait_idle(left) and self._unloaders.wait_idle(left)):
                return False
            if self._loaders.wait_idle(0) and self._unloaders.wait_idle(0):
                return True

    def _latest_outcome(self, name: str) -> tuple[str, VersionState | None]:
        """How tensorflow_model_server's state monitor answers a wait for the Latest
        version of ``name``: the newest version that is AVAILABLE or has ended decides
        (``available`` or ``failed``); a failed load with retries left has not ended
        there (its retries run inside the load), so it decides nothing yet
        (``waiting``, with it).  No version at all: ``none``.  Caller holds the lock."""
        model = self._models.get(name)
        if model is None or not model.versions:
            return "none", None
        retrying = None
        for version in sorted(model.versions, reverse=True):
            vs = model.versions[version]
            if vs.state == AVAILABLE:
                return "available", vs
            if vs.state == END and vs.error is not None:
                gone = version not in model.aspired and not vs.path.exists()
                if vs.failures > self._max_retries or gone:
                    return "failed", vs  # no retry will come
                retrying = retrying or vs
        return "waiting", retrying

    def await_latest(self, names: set[str], retry: Callable[[], None]
                     ) -> list[tuple[str, VersionState]]:
        """Wait, as tensorflow_model_server does at start-up and for the models a reload
        adds, until the Latest version of every model in ``names`` is decided (see
        ``_latest_outcome``); return the (model, version state) pairs that failed, by
        name and version.  A failed load's retries are due on the Source's next poll:
        ``retry`` (a poll) is called when one is due, so they run even before the
        Source polls on its own.  A model with no version at all is not waited for:
        tensorflow_model_server would wait for one (without answering anything); this
        server serves, and says NOT_FOUND for it."""
        while True:
            with self._changed:
                outcome = {n: self._latest_outcome(n) for n in names}
                if all(state != "waiting" for state, _ in outcome.values()):
                    return sorted(((n, vs) for n, (state, vs) in outcome.items()
                                   if state == "failed"),
                                  key=lambda item: (item[0], item[1].version))
                due = [vs.retry_at for state, vs in outcome.values()
                       if state == "waiting" and vs is not None]
                wait = max(0.0, min(due) - time.monotonic()) if due else 1.0
                if wait > 0:
                    self._changed.wait(min(wait, 1.0))
                    continue
            retry()  # outside the lock: the poll calls set_aspired_versions
            with self._changed:  # a version being rewritten is offered a poll later
                self._changed.wait(0.1)

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
        """Unload models that are no longer configured (on the unload threads; a load of
        theirs still running is abandoned)."""
        for name in [n for n in self.model_names() if n not in names]:
            self.set_aspired_versions(name, {})
            with self._lock:
                model = self._models.pop(name, None)
                for vs in model.versions.values() if model else ():
                    if vs.state == LOADING:
                        vs.abandon.set()
                        vs.state = END
                self._changed.notify_all()

    # -- the request side ----------------------------------------------------------------
    @property
    def generation(self) -> int:
        """A number that grows on every state change (a version loading, available,
        unloaded, a model added or retired)."""
        return self._changed.count

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
        """GetModelStatus as tensorflow_model_server answers it: the state monitor's
        versions of ``name``, newest first, or the one ``version``.  A version label is
        not resolved there: without a version it is ignored (every version is listed,
        whatever the label, set or not).  Nothing known is NOT_FOUND with its words,
        for a model never configured as for one with no version yet (an empty name
        included)."""
        del label  # tensorflow_model_server's status ignores it (see the docstring)
        with self._lock:
            model = self._models.get(name)
            versions = model.versions if model is not None else {}
            if version is not None:
                if version not in versions:
                    raise StatusError(Code.NOT_FOUND,
                                       f"Could not find version {version} of model {name}")
                return [versions[version]]
            if not versions:
                raise StatusError(Code.NOT_FOUND,
                                   f"Could not find any versions of model {name}")
            return [versions[v] for v in sorted(versions, reverse=True)]

    def loads_running(self) -> bool:
        """True while TensorFlow still works on a load (one abandoned, or one that was in
        progress at shutdown): the process must then end without the interpreter's
        shutdown, which would stop that thread inside TensorFlow and abort."""
        return self._loaders.busy() or any(t.is_alive() for t in self._load_threads)

    def unload_all(self) -> None:
        """At shutdown: abandon loads (queued ones never start), let the worker threads
        end, close every servable on this thread."""
        with self._lock:
            servables = []
            for model in self._models.values():
                model.aspired = {}
                for vs in model.versions.values():
                    vs.abandon.set()
                    if vs.servable is not None:
                        servables.append(vs.servable)
                    vs.servable, vs.state = None, END
            self._changed.notify_all()
        self._loaders.stop()
        self._unloaders.stop()
        for thread in list(self._load_threads):
            thread.join(0.1)
        for servable in servables:
            servable.close()
