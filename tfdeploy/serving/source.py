"""Source: watches model base paths and tells the Manager which versions are aspired.

A version directory is offered only once it holds a complete SavedModel that has stopped
changing: a copy still in progress, or a directory someone is filling by hand, is ignored
until it is whole (our own exports appear atomically, other tools' may not).

A base path that is missing or unreadable (renamed, unmounted, permissions) changes
nothing: the loaded versions keep serving until it is back.  An existing base path with
no versions in it unloads the model, as with tensorflow_model_server.

Directory names are read as tensorflow_model_server reads them (``tfs/versions.py``): a
name that looks like a version but is not one (``²``, a 20-digit number) is ignored with
one log line, the first time it is seen.  Whatever goes wrong with one model's base path
is that model's problem only: the others are still polled.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tfdeploy.serving import policy as version_policy
from tfdeploy.tfs.versions import TFLITE_FILE, saved_model_file, scan_versions

log = logging.getLogger("tfdeploy.serving.source")

#: A complete-looking version untouched for this long is accepted without a second look.
SETTLED_SECONDS = 2.0


def _fingerprint(version_dir: Path) -> tuple | None:
    """(relative path, size, mtime) of every file, or None if the SavedModel is incomplete.

    A directory with only ``model.tflite`` is offered too: tensorflow_model_server's source
    offers every version directory, and with --prefer_tflite_model that file is all a
    version needs (without the flag its load fails and its status says so)."""
    if saved_model_file(version_dir) is None and not (version_dir / TFLITE_FILE).is_file():
        return None
    variables = version_dir / "variables"
    if variables.is_dir() and not (variables / "variables.index").is_file():
        return None
    try:
        return tuple(sorted(
            (str(p.relative_to(version_dir)), st.st_size, st.st_mtime_ns)
            for p in version_dir.rglob("*") if p.is_file() for st in [p.stat()]
        ))
    except FileNotFoundError:  # changing under our feet
        return None


class FileSystemSource:
    """Polls each model's base path; calls ``on_aspired(model, {version: path})``."""

    def __init__(self, on_aspired: Callable[[str, dict[int, Path]], None],
                 poll_seconds: float = 1.0):
        self._on_aspired = on_aspired
        self._poll_seconds = poll_seconds
        self._models: dict[str, tuple[Path, object]] = {}
        self._seen: dict[tuple[str, int], tuple] = {}
        self._warned: set[str] = set()  # models whose base path is unreadable
        self._empty: set[str] = set()  # models with no complete version on disk
        self._ignored: set[tuple[str, str]] = set()  # (model, directory) already logged
        self._failing: dict[str, str] = {}  # model -> the error its last poll logged
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def set_models(self, models: dict[str, tuple[Path, object]]) -> None:
        """``{name: (base_path, version_policy)}``; takes effect at the next poll."""
        with self._lock:
            self._models = dict(models)

    def ready_versions(self, name: str, base: Path) -> dict[int, Path]:
        ready = {}
        now = time.time()
        found, ignored = scan_versions(base)
        for dirname, why in ignored:
            if (name, dirname) not in self._ignored:
                self._ignored.add((name, dirname))
                log.warning("ignoring directory %r under base path of model %s: %s",
                            dirname, name, why)
        for version, path in found.items():
            fp = _fingerprint(path)
            key = (name, version)
            previous = self._seen.get(key)
            self._seen[key] = fp
            if fp is None:
                continue
            newest = max((entry[2] for entry in fp), default=0) / 1e9
            if fp == previous or now - newest >= SETTLED_SECONDS:
                ready[version] = path
        return ready

    def poll_once(self) -> None:
        with self._lock:
            models = dict(self._models)
        for name, (base, policy) in models.items():
            try:
                if not base.is_dir():
                    raise FileNotFoundError(f"Could not find base path {base} for servable "
                                            f"{name}")
                ready = self.ready_versions(name, base)
                if not base.is_dir():  # went away while we looked: what we saw is partial
                    raise FileNotFoundError(f"base path {base} of servable {name} vanished")
            except OSError as exc:
                # Missing (renamed, unmounted) or unreadable: say nothing to the Manager, so
                # what is loaded keeps serving until the base path is back, as
                # tensorflow_model_server does.  Logged once per outage.
                if name not in self._warned:
                    log.error("cannot read base path of model %s (keeping what is loaded): "
                              "%s", name, exc)
                    self._warned.add(name)
                continue
            except Exception as exc:  # anything else: this model waits, the others go on
                self._log_failure(name, f"cannot scan base path of model {name} (keeping "
                                  f"what is loaded): {exc}")
                continue
            if name in self._warned:
                log.info("base path of model %s is readable again", name)
                self._warned.discard(name)
            if ready:
                self._empty.discard(name)
            elif name not in self._empty:
                log.warning("No versions of servable %s found under base path %s", name, base)
                self._empty.add(name)
            keep = version_policy.aspired_versions(policy, ready)
            try:
                self._on_aspired(name, {v: ready[v] for v in sorted(keep)})
            except Exception as exc:  # one model's trouble never stops the others' discovery
                self._log_failure(name, f"cannot update versions of model {name}: {exc}")
                continue
            self._failing.pop(name, None)

    def _log_failure(self, name: str, message: str) -> None:
        """Log a model's failed poll once, not once per poll: again only if it changes."""
        if self._failing.get(name) != message:
            self._failing[name] = message
            log.error("%s", message)

    def start(self) -> None:
        self.poll_once()
        if self._poll_seconds > 0:
            self._thread = threading.Thread(target=self._run, name="fs-source", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._poll_seconds):
            try:
                self.poll_once()
            except Exception:  # a bad poll must not end polling
                log.exception("file system poll failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
