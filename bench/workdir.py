"""A bench run's scratch directory (exports, logs, images): removed when the run ends
unless kept, so repeated runs do not fill /tmp (``precision.py`` writes ~300 MB of
SavedModels a run)."""

from __future__ import annotations

import argparse
import atexit
import shutil
import tempfile
from pathlib import Path


def add_keep_option(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--keep", type=Path, metavar="DIR",
                    help="write the run's files (exports, server logs) into DIR and keep "
                         "them; by default a temporary directory, removed at exit")


def work_dir(name: str, keep: Path | None = None) -> Path:
    """``keep`` (created if missing), or a new temporary directory removed at exit:
    after an error or Ctrl-C too (atexit runs then; servers the bench started are stopped
    in its own ``finally`` blocks first)."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        return keep
    work = Path(tempfile.mkdtemp(prefix=f"tfdeploy-bench-{name}-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    return work
