"""Generated protobuf modules of TF Serving and TF, loaded without importing TensorFlow.

``tensorflow_serving.apis.*_pb2`` import ``tensorflow.core.framework.*_pb2``, and importing
any ``tensorflow.*`` module normally runs ``tensorflow/__init__.py``: seconds and hundreds
of MB before a client sends a byte.  We import those pure-protobuf modules under a
temporary placeholder package instead, then remove the placeholder so that a later real
``import tensorflow`` in the same process still works (it reuses the loaded modules).

One order does not work: after a lean load, importing a generated module the ordinary way
(``from tensorflow_serving.apis import classification_pb2``) before TensorFlow itself
starts TensorFlow's import from inside a half-imported proto module.  Code that wants
both imports TensorFlow first (the server does), or loads protos only through here.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from functools import cache

_TF_PROTO_MODULES = (
    "tensorflow.core.framework.types_pb2",
    "tensorflow.core.framework.tensor_shape_pb2",
    "tensorflow.core.framework.resource_handle_pb2",
    "tensorflow.core.framework.tensor_pb2",
    "tensorflow.core.protobuf.meta_graph_pb2",
)

_SERVING_MODULES = (
    "tensorflow_serving.apis.model_pb2",
    "tensorflow_serving.apis.predict_pb2",
    "tensorflow_serving.apis.get_model_metadata_pb2",
    "tensorflow_serving.apis.get_model_status_pb2",
)


def _import_lean(names: tuple[str, ...]) -> None:
    """Import ``names`` with a placeholder ``tensorflow`` package in place, so their
    ``tensorflow.*`` imports resolve to the generated modules only."""
    placeholder = None
    if "tensorflow" not in sys.modules:
        spec = importlib.util.find_spec("tensorflow")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("the tensorflow package (its protobuf modules) is not installed")
        placeholder = types.ModuleType("tensorflow")
        placeholder.__path__ = list(spec.submodule_search_locations)
        sys.modules["tensorflow"] = placeholder
    try:
        for name in names:
            importlib.import_module(name)
    finally:
        if placeholder is not None and sys.modules.get("tensorflow") is placeholder:
            del sys.modules["tensorflow"]


@cache
def _load() -> None:
    _import_lean(_TF_PROTO_MODULES + _SERVING_MODULES)


def module(name: str) -> types.ModuleType:
    """A generated protobuf module (or grpc stub module) by dotted name, e.g.
    ``tensorflow_serving.apis.predict_pb2``; loaded the lean way on first use."""
    _load()
    if name not in sys.modules:
        _import_lean((name,))
    return sys.modules[name]


def saved_model_pb2() -> types.ModuleType:
    """(Loaded on first use: clients never need it, ``inspect`` and servers do.)"""
    return module("tensorflow.core.protobuf.saved_model_pb2")


def types_pb2() -> types.ModuleType:
    return module("tensorflow.core.framework.types_pb2")


def dtype_name(enum: int) -> str:
    """DataType enum value -> TF's short name (``float``, ``int64``, ``string`` ...)."""
    name = types_pb2().DataType.Name(enum)
    return name[3:].lower() if name.startswith("DT_") else name


def dtype_enum(name: str) -> int:
    """TF's short dtype name (``float``, ``int64``, ``string``) -> DataType enum value."""
    try:
        return types_pb2().DataType.Value("DT_" + name.upper())
    except ValueError:
        raise ValueError(f"unknown tensor dtype {name!r}") from None
