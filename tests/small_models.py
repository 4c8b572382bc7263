"""Small SavedModels built in the test session, for server tests that need a model that
loads in well under a second (the DeepLab exports take several).

``half_plus_two``: y = 0.5 * x + 2 with a [?, 1] float input, saved by TF2's
``tf.saved_model.save`` with the variable the official test models have (so a truncated
variables file really breaks loading).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np


def save_half_plus_two(path: Path) -> Path:
    """A TF2 SavedModel at ``path``: ``serving_default`` maps x [?, 1] to y = x / 2 + 2."""
    import tensorflow as tf

    class HalfPlusTwo(tf.Module):
        def __init__(self):
            super().__init__()
            self.a = tf.Variable(0.5)
            self.b = tf.Variable(2.0)

        @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
        def serve(self, x):
            return {"y": self.a * x + self.b}

    module = HalfPlusTwo()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def save_gated_half_plus_two(path: Path) -> Path:
    """Like ``save_half_plus_two`` with a second input, ``gate`` (a file path): a call
    returns only once that file exists (or after a bounded number of looks).  Tests hold
    requests in flight with it, then open the gate, instead of relying on timing."""
    import tensorflow as tf

    class Gated(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x"),
                                      tf.TensorSpec([], tf.string, name="gate")])
        def serve(self, x, gate):
            def closed(i):
                return tf.logical_and(tf.size(tf.io.matching_files(gate)) == 0,
                                      i < 2_500_000)

            (looks,) = tf.while_loop(closed, lambda i: (i + 1,), [tf.constant(0)])
            return {"y": x * 0.5 + 2.0, "looks": looks}

    module = Gated()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def half_plus_two(x: np.ndarray) -> np.ndarray:
    return x * 0.5 + 2


def put_version(base: Path, version: int, source: Path) -> Path:
    """Copy ``source`` to ``base/version`` atomically (as an export does): copy beside it,
    then rename into place, so the server never sees a half-copied directory."""
    staging = base / f".staging-{version}"
    shutil.copytree(source, staging)
    target = base / str(version)
    staging.rename(target)
    return target


def corrupt_graph(version_dir: Path) -> None:
    """Replace the SavedModel proto with bytes that do not parse."""
    (version_dir / "saved_model.pb").write_bytes(b"\x0a\xff\xff garbage, not a SavedModel")


def truncate_variables(version_dir: Path) -> None:
    """Cut every variables data shard to half its size (the index still lists them whole)."""
    for shard in (version_dir / "variables").glob("variables.data-*"):
        data = shard.read_bytes()
        shard.write_bytes(data[: len(data) // 2])
