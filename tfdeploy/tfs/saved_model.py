"""Reading SavedModels and SignatureDefs without TensorFlow.

``tfdeploy inspect`` and the embedded server read ``saved_model.pb`` (or the seed's text
``saved_model.pbtxt``) here; clients turn the SignatureDefs a server returns into
``Signature`` tables with the same functions, so dtype and shape are computed one way.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from google.protobuf.message import DecodeError

from tfdeploy.errors import UserError
from tfdeploy.tfs import protos
from tfdeploy.tfs.versions import SAVED_MODEL_FILES, saved_model_file

#: (dtype name, shape): shape is None for unknown rank, a dimension None when unknown.
TensorSpec = tuple[str, list[int | None] | None]


class SavedModelError(UserError):
    """A version directory without a readable SavedModel."""


@dataclass
class Signature:
    """Inputs and outputs of a signature: tensor key -> (dtype name, shape)."""

    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    method_name: str = ""


def shape_of(info) -> list[int | None] | None:
    """The shape of a TensorInfo: None for unknown rank, None for unknown dimensions."""
    shape = info.tensor_shape
    if shape.unknown_rank:
        return None
    return [d.size if d.size >= 0 else None for d in shape.dim]


def tensor_spec(info) -> TensorSpec:
    return protos.dtype_name(info.dtype), shape_of(info)


def signature(signature_def) -> Signature:
    """A SignatureDef proto as a ``Signature`` table (keys sorted)."""
    return Signature({k: tensor_spec(v) for k, v in sorted(signature_def.inputs.items())},
                     {k: tensor_spec(v) for k, v in sorted(signature_def.outputs.items())},
                     signature_def.method_name)


def shape_text(shape: list[int | None] | None) -> str:
    """``[1, ?, ?, 3]``, or ``unknown rank``."""
    if shape is None:
        return "unknown rank"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def read_saved_model(version_dir: Path):
    """(path of the file read, SavedModel proto) of one version directory."""
    path = saved_model_file(version_dir)
    if path is None:
        raise SavedModelError(f"{version_dir}: no {' or '.join(SAVED_MODEL_FILES)}")
    message = protos.saved_model_pb2().SavedModel()
    try:
        if path.suffix == ".pbtxt":
            text_format.Parse(path.read_text(), message)
        else:
            message.ParseFromString(path.read_bytes())
    except (DecodeError, text_format.ParseError, UnicodeDecodeError) as exc:
        raise SavedModelError(f"{path}: not a valid SavedModel ({exc})") from None
    return path, message


def meta_graph(message, tags: Iterable[str]):
    """The MetaGraphDef whose tag set is exactly ``tags`` (as loaders match them), or
    None."""
    wanted = set(tags)
    for mg in message.meta_graphs:
        if set(mg.meta_info_def.tags) == wanted:
            return mg
    return None


def signature_defs(meta_graph_def) -> dict:
    """Key -> SignatureDef of a MetaGraphDef, without internal entries
    (``__saved_model_init_op``)."""
    return {k: _copy(v) for k, v in meta_graph_def.signature_def.items()
            if not k.startswith("__")}


def _copy(message):
    """A message of its own: a sub-message of a parsed SavedModel keeps the whole of it
    alive (protobuf's arena), constants of an int8 graph (tens of MB) included."""
    copy = type(message)()
    copy.CopyFrom(message)
    return copy


def serving_signature_defs(message, tag: str) -> dict | None:
    """Key -> SignatureDef of the first MetaGraph tagged ``tag``, without internal
    entries (``__saved_model_init_op``); None when no MetaGraph has the tag."""
    for mg in message.meta_graphs:
        if tag in mg.meta_info_def.tags:
            return signature_defs(mg)
    return None
