"""What kind of model ``tfdeploy export`` was given, told from the path alone.

Everything after export (signatures, serving, client, bench, manifests) is model-agnostic,
so export is the one place that must recognise each way a segmentation model is shipped:

- ``checkpoint``: the seed's training directories and our own checkpoints (``checkpoint.py``);
- ``frozen_graph``: a frozen GraphDef such as the DeepLab model zoo's
  ``frozen_inference_graph.pb``, its folder, or the zoo's ``.tar.gz`` (``frozen.py``);
- ``keras``: a ``.keras`` / ``.h5`` model file (``wrapped.py``);
- ``saved_model``: a SavedModel directory whose signature maps images to logits or
  labels (``wrapped.py``).

Detection reads no TensorFlow: it only looks at names, so a wrong path fails fast.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path

from tfdeploy.errors import UserError

CHECKPOINT = "checkpoint"
FROZEN_GRAPH = "frozen_graph"
KERAS = "keras"
SAVED_MODEL = "saved_model"
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
#: The name the DeepLab model zoo gives its frozen graph, inside its folder or tarball.
ZOO_GRAPH = "frozen_inference_graph.pb"
TARBALL_SUFFIXES = (".tar.gz", ".tgz", ".tar")
#: A frozen graph larger than this is refused before it is read (protobuf's own limit).
MAX_GRAPH_BYTES = 2 ** 31 - 1


@dataclass(frozen=True)
class Source:
    kind: str
    #: The file to read (the .pb itself for a frozen graph; the tarball for one in a
    #: tarball, whose bytes are then in ``data``).
    path: Path
    #: What the user named, for messages and the export's metadata.
    given: Path
    #: A tarball's frozen graph, read into memory (nothing is extracted to disk).
    data: bytes | None = None


def _from_tarball(path: Path) -> bytes:
    """The zoo's frozen graph from its tarball, read into memory (a tarball's own paths
    are never written); the checkpoint files next to it are not needed: the frozen graph
    carries its weights as constants."""
    try:
        with tarfile.open(path) as tar:
            members = [m for m in tar.getmembers()
                       if m.isfile() and Path(m.name).name == ZOO_GRAPH]
            if not members:
                raise UserError(f"{path}: no {ZOO_GRAPH} in this tarball")
            if members[0].size > MAX_GRAPH_BYTES:
                raise UserError(f"{path}: {ZOO_GRAPH} is larger than 2 GiB")
            data = tar.extractfile(members[0])
            assert data is not None  # a regular file member always has data
            return data.read()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise UserError(f"{path}: not a readable tarball ({exc})") from None


def kind_of(path: str | Path) -> str:
    """The kind ``detect`` would give, from names alone (nothing is extracted)."""
    p = Path(path)
    name = p.name.lower()
    if p.is_file() and name == "saved_model.pb":
        return SAVED_MODEL
    if p.is_file() and name.endswith(".pb"):
        return FROZEN_GRAPH
    if p.is_file() and name.endswith(KERAS_SUFFIXES):
        return KERAS
    if p.is_dir() and (p / "saved_model.pb").is_file():
        return SAVED_MODEL
    if p.is_dir() and (p / ZOO_GRAPH).is_file():
        return FROZEN_GRAPH
    if p.is_file() and name.endswith(TARBALL_SUFFIXES):
        return FROZEN_GRAPH
    return CHECKPOINT


def detect(path: str | Path | None) -> Source:
    """The kind of ``path``: a frozen graph (.pb file, a folder holding the zoo's
    frozen_inference_graph.pb, or a tarball with one), a Keras model file, a SavedModel
    directory (or its saved_model.pb), else a checkpoint (which
    ``checkpoint.locate`` then checks and explains)."""
    if path is None:
        return Source(CHECKPOINT, Path(), Path())
    p = Path(path)
    name = p.name.lower()
    if p.is_file() and name.endswith(".pb"):
        if name == "saved_model.pb":
            return Source(SAVED_MODEL, p.parent, p.parent)
        return Source(FROZEN_GRAPH, p, p)
    if p.is_file() and name.endswith(KERAS_SUFFIXES):
        return Source(KERAS, p, p)
    if p.is_dir() and (p / "saved_model.pb").is_file():
        return Source(SAVED_MODEL, p, p)
    if p.is_dir() and (p / ZOO_GRAPH).is_file():
        return Source(FROZEN_GRAPH, p / ZOO_GRAPH, p)
    if p.is_file() and name.endswith(TARBALL_SUFFIXES):
        return Source(FROZEN_GRAPH, p, p, _from_tarball(p))
    return Source(CHECKPOINT, p, p)
