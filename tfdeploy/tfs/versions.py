"""Version directories under a model base path, the way TF Serving sees them.

A version is a directory whose name is a version number and that holds a complete
SavedModel (``saved_model.pb`` or ``saved_model.pbtxt``); a server started with
``--prefer_tflite_model`` also serves a version that holds only ``model.tflite``.
Anything else, such as our export's temporary directories, is invisible to servers.  No
TensorFlow here.

A name is a version number exactly when tensorflow_model_server's file-system source
reads one from it: ASCII decimal digits, optionally signed and surrounded by ASCII
whitespace, whose value fits a signed 64-bit integer (the type of a version everywhere
in TF Serving's protos).  Names Python alone would read as numbers (``²``, ``١``:
``str.isdigit()`` accepts them) or values past 2^63-1 are not versions.
"""

from __future__ import annotations

import re
from pathlib import Path

SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
#: The TensorFlow Lite model a version may hold (served with --prefer_tflite_model).
TFLITE_FILE = "model.tflite"
#: Requests TF Serving replays when it loads a version (PredictionLog TFRecord).
WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
#: What tfdeploy records about an export (source checkpoint, architecture); servers ignore it.
METADATA_FILE = Path("assets.extra") / "tfdeploy.json"


def saved_model_file(version_dir: Path) -> Path | None:
    for name in SAVED_MODEL_FILES:
        candidate = version_dir / name
        if candidate.is_file():
            return candidate
    return None


#: The largest version a servable can have: versions are int64 in TF Serving's protos.
MAX_VERSION = (1 << 63) - 1
_ASCII_SPACE = " \t\n\v\f\r"
_VERSION_NAME = re.compile(r"[+-]?[0-9]+", re.ASCII)


def parse_version(name: str) -> int | None:
    """The version a directory called ``name`` is, or None: the digits tensorflow_model_server
    accepts (see the module docstring), nothing else."""
    text = name.strip(_ASCII_SPACE)
    if not _VERSION_NAME.fullmatch(text):
        return None
    value = int(text)
    return value if -MAX_VERSION - 1 <= value <= MAX_VERSION else None


def looks_like_version(name: str) -> bool:
    """True for names a person may have meant as a version that are not one (``²``, a
    20-digit number): worth a log line, unlike an export's temporary directory."""
    text = name.strip()
    return bool(text) and text.lstrip("+-").isdigit() and parse_version(name) is None


def scan_versions(base: Path) -> tuple[dict[int, Path], list[tuple[str, str]]]:
    """``({version: directory}, [(name, why ignored)])`` of the child directories of
    ``base``, versions ascending.  Names that are not versions are skipped silently unless
    they look like one; of two names for one version (``1``, ``01``) the one sorting last
    wins, as a warning says.  Raises OSError if ``base`` cannot be listed."""
    found: dict[int, Path] = {}
    ignored: list[tuple[str, str]] = []
    for child in sorted(base.iterdir(), key=lambda p: p.name):
        version = parse_version(child.name)
        if version is None:
            if looks_like_version(child.name) and child.is_dir():
                ignored.append((child.name, "not a version number tensorflow_model_server "
                                "reads (ASCII digits, at most 2^63-1)"))
            continue
        if not child.is_dir():
            continue
        if version in found:
            ignored.append((found[version].name, f"version {version} is also {child.name!r}, "
                            "which is used"))
        found[version] = child
    return dict(sorted(found.items())), ignored


def numeric_dirs(base: Path) -> dict[int, Path]:
    """Every positive version directory, complete or not (used to pick the next version)."""
    if not base.is_dir():
        return {}
    return {v: p for v, p in scan_versions(base)[0].items() if v > 0}


def versions(base: Path) -> dict[int, Path]:
    """Complete SavedModel versions under ``base``, ascending."""
    return {v: p for v, p in numeric_dirs(base).items() if saved_model_file(p) is not None}


def next_version(base: Path) -> int:
    dirs = numeric_dirs(base)
    return max(dirs) + 1 if dirs else 1


#: The largest version number: TF Serving numbers versions as int64, so a larger version
#: directory could not be reported in a status response.
MAX_VERSION = 2**63 - 1
