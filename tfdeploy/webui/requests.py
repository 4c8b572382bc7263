"""The page's view of a request log (``tfdeploy ui --request-log``, or the logs of a
recorded server's ``logging_config``): read-only, through ``client.request_log``.

Why a listing of offsets: a log holds up to ``--request_log_max_total_bytes`` of images,
so the page lists requests (each file scanned once, again only when it changes) and reads
one record again when its entry is shown.  Entries are named by file and offset, and only
files of the configured logs are ever opened: the page cannot be used to read any other
file.
"""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from pathlib import Path

from tfdeploy.client import request_log
from tfdeploy.client.request_log import Entry, LogError

#: requests per page of the list
PAGE = 10


class RequestLogView:
    """The requests of one or more logs (a directory, a ``filename_prefix`` or a file),
    newest first, with what could not be read."""

    def __init__(self, logs: list[Path]) -> None:
        self.logs = list(logs)
        self._files: dict[Path, tuple[tuple[int, int], list[Entry], str | None]] = {}
        self._lock = threading.Lock()

    def _scan(self) -> tuple[list[Entry], list[str]]:
        found: list[Entry] = []
        problems: list[str] = []
        seen: set[Path] = set()
        for log in self.logs:
            try:
                files = request_log.log_files(log)
            except LogError:
                problems.append(f"{log}: no request logged yet (no log file)")
                continue
            for f in files:
                seen.add(f)
                try:
                    st = f.stat()
                except OSError:
                    continue  # rotated away since it was listed
                key = (st.st_size, st.st_mtime_ns)
                with self._lock:
                    cached = self._files.get(f)
                if cached is None or cached[0] != key:
                    listed, problem = request_log.scan_file(f)
                    cached = (key, listed, problem)
                    with self._lock:
                        self._files[f] = cached
                found += cached[1]
                if cached[2]:
                    problems.append(cached[2])
        with self._lock:  # forget files the server removed past its cap
            for gone in set(self._files) - seen:
                del self._files[gone]
        found.sort(key=lambda e: (e.time, str(e.file), e.offset), reverse=True)
        return found, problems

    def page(self, offset: int, limit: int = PAGE) -> dict:
        """One page of the list, newest first."""
        found, problems = self._scan()
        offset = max(0, min(offset, max(len(found) - 1, 0)))
        return {"logs": [str(p) for p in self.logs], "total": len(found),
                "offset": offset, "limit": limit, "problems": problems,
                "entries": [summary(e) for e in found[offset:offset + limit]]}

    def entry(self, entry_id: str) -> Entry:
        """The entry ``entry_id`` names (``<file>@<offset>``), only in a listed log file;
        LogError otherwise (it may have been rotated away)."""
        path, _, offset = entry_id.rpartition("@")
        if not offset.isdigit():
            raise LogError(f"no request {entry_id!r} in the log")
        with self._lock:
            known = {str(f): entries for f, (_, entries, _) in self._files.items()}
        if path not in known:
            self._scan()
            with self._lock:
                known = {str(f): entries for f, (_, entries, _) in self._files.items()}
        for e in known.get(path, []):
            if e.offset == int(offset):
                return request_log.load(Entry(**{**e.__dict__, "log": None}))
        raise LogError("this request is no longer in the log (the server removes the "
                       "oldest files past its size cap); refresh the list")


def summary(e: Entry) -> dict:
    """What the list shows of one request.  TF Serving's PredictionLog has no latency
    field, so none is shown as measured."""
    inputs = ", ".join(f"{k} [{', '.join(map(str, s))}]" for k, s in sorted(e.inputs.items()))
    return {"id": f"{e.file}@{e.offset}", "file": e.file.name, "index": e.index,
            "time": datetime.fromtimestamp(e.time, timezone.utc).strftime(
                "%Y-%m-%d %H:%M:%S UTC"),
            "kind": e.kind, "model": e.model, "version": e.version,
            "signature": e.signature, "image_sizes": e.image_sizes, "inputs": inputs,
            "response": e.has_response, "latency_ms": None}
