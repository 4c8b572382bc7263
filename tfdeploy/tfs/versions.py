"""Version directories under a model base path, the way TF Serving sees them.

A version is a directory whose name is a positive integer and that holds a complete
SavedModel (``saved_model.pb`` or ``saved_model.pbtxt``); a server started with
``--prefer_tflite_model`` also serves a version that holds only ``model.tflite``.
Anything else, such as our export's temporary directories, is invisible to servers.  No
TensorFlow here.
"""

from __future__ import annotations

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


def numeric_dirs(base: Path) -> dict[int, Path]:
    """Every numeric child directory, complete or not (used to pick the next version)."""
    if not base.is_dir():
        return {}
    out = {}
    for child in base.iterdir():
        if child.name.isdigit() and child.is_dir() and int(child.name) > 0:
            out[int(child.name)] = child
    return dict(sorted(out.items()))


def versions(base: Path) -> dict[int, Path]:
    """Complete SavedModel versions under ``base``, ascending."""
    return {v: p for v, p in numeric_dirs(base).items() if saved_model_file(p) is not None}


def next_version(base: Path) -> int:
    dirs = numeric_dirs(base)
    return max(dirs) + 1 if dirs else 1
