"""Checkpoint readers: find the checkpoint a user points at, work out the architecture,
and load its weights by slim name with strict checks.

Two formats share one name-based TF checkpoint:
- seed: ``model.ckpt*`` next to the seed's ``data.json`` (training arguments);
- native: the same, next to our ``config.json`` (full architecture, e.g. the demo model).

The user may point at the directory, at its ``checkpoint`` state file, or at a prefix.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tfdeploy.errors import UserError
from tfdeploy.export.config import ModelConfig
from tfdeploy.export.layout import is_training_only, variable_shapes


@dataclass(frozen=True)
class Checkpoint:
    """A located checkpoint: its prefix, which format, and the architecture it holds."""

    prefix: Path
    format: str  # "seed" or "native"
    config: ModelConfig

    def load_weights(self) -> dict[str, np.ndarray]:
        return read_weights(self.prefix, self.config)


def _prefix_from_state_file(state: Path) -> Path | None:
    """Read ``model_checkpoint_path`` from a ``checkpoint`` file.  Training runs record
    absolute paths of the training machine; fall back to the basename next to the file."""
    m = re.search(r'^model_checkpoint_path:\s*"(.*)"\s*$', state.read_text(errors="replace"), re.M)
    if not m:
        return None
    recorded = Path(m.group(1))
    for candidate in (recorded, state.parent / recorded, state.parent / recorded.name):
        if Path(f"{candidate}.index").is_file():
            return candidate
    return None


def _step(prefix: Path) -> int:
    m = re.search(r"-(\d+)$", prefix.name)
    return int(m.group(1)) if m else -1


def find_prefix(path: Path) -> Path:
    """Resolve a directory, a ``checkpoint`` state file or a prefix to a checkpoint prefix."""
    if Path(f"{path}.index").is_file():
        return path
    if path.is_file() and path.name == "checkpoint":
        prefix = _prefix_from_state_file(path)
        if prefix is None:
            raise UserError(f"{path}: state file names no checkpoint that exists")
        return prefix
    if path.is_dir():
        state = path / "checkpoint"
        if state.is_file():
            prefix = _prefix_from_state_file(state)
            if prefix is not None:
                return prefix
        indexes = sorted(path.glob("*.index"), key=lambda p: (_step(p.with_suffix("")), p.name))
        if indexes:
            return indexes[-1].with_suffix("")
        raise UserError(f"{path}: no checkpoint (model.ckpt*.index) in this directory")
    if path.exists():
        raise UserError(f"{path}: not a checkpoint directory, state file or prefix")
    raise UserError(f"{path}: no such checkpoint")


def locate(path: str | Path) -> Checkpoint:
    """Find the checkpoint and its architecture description (config.json or data.json)."""
    prefix = find_prefix(Path(path))
    folder = prefix.parent
    native, seed = folder / "config.json", folder / "data.json"
    if native.is_file():
        return Checkpoint(prefix, "native", ModelConfig.from_json(_read_json(native), str(native)))
    if seed.is_file():
        return Checkpoint(prefix, "seed", ModelConfig.from_seed_args(_read_json(seed), str(seed)))
    raise UserError(
        f"{folder}: missing data.json (seed training arguments) or config.json next to "
        f"checkpoint {prefix.name}"
    )


def _read_json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise UserError(f"{path}: expected a JSON object")
    return doc


def _names(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def read_weights(prefix: Path, config: ModelConfig) -> dict[str, np.ndarray]:
    """Every served variable by slim name.  Missing, unexpected (other than training-only
    state) or wrongly shaped variables are a UserError naming the first offenders."""
    import tensorflow as tf  # only now: locating a checkpoint must stay cheap

    try:
        reader = tf.train.load_checkpoint(str(prefix))
    except (tf.errors.OpError, ValueError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{prefix}: unreadable checkpoint ({msg})") from None
    found = reader.get_variable_to_shape_map()
    expected = variable_shapes(config)
    missing = [n for n in expected if n not in found]
    if missing:
        raise UserError(
            f"{prefix.name}: {len(missing)} variable(s) missing for {config.backbone}: "
            f"{_names(missing)}"
        )
    unexpected = sorted(n for n in found if n not in expected and not is_training_only(n, config))
    if unexpected:
        raise UserError(f"{prefix.name}: unexpected variable(s): {_names(unexpected)}")
    wrong = [
        f"{n} {list(found[n])} != {list(expected[n])}"
        for n in expected
        if tuple(found[n]) != tuple(expected[n])
    ]
    if wrong:
        raise UserError(f"{prefix.name}: wrongly shaped variable(s): {_names(wrong)}")
    try:
        return {n: reader.get_tensor(n).astype(np.float32) for n in expected}
    except (tf.errors.OpError, IndexError, ValueError) as exc:
        # a truncated or corrupt data file: the index lists the tensor, its bytes are gone
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{prefix}: unreadable checkpoint data, truncated or corrupt "
                        f"({msg})") from None


def write_checkpoint(directory: Path, config: ModelConfig, weights: dict[str, np.ndarray],
                     name: str = "model.ckpt") -> Path:
    """Write a native checkpoint (name-based TF checkpoint + config.json + state file)."""
    import tensorflow as tf

    directory.mkdir(parents=True, exist_ok=True)
    prefix = directory / name
    names = sorted(weights)
    tf.raw_ops.SaveV2(
        prefix=str(prefix), tensor_names=names, shape_and_slices=[""] * len(names),
        tensors=[tf.constant(weights[n]) for n in names],
    )
    (directory / "checkpoint").write_text(
        f'model_checkpoint_path: "{name}"\nall_model_checkpoint_paths: "{name}"\n'
    )
    config.save(directory / "config.json")
    return prefix
