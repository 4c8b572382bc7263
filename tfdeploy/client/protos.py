"""Generated protobuf modules of TF Serving and TF, loaded without importing TensorFlow.

``tensorflow_serving.apis.*_pb2`` import ``tensorflow.core.framework.*_pb2``, and importing
any ``tensorflow.*`` module normally runs ``tensorflow/__init__.py``: seconds and hundreds
of MB before a client sends a byte.  We import those pure-protobuf modules under a
temporary placeholder package instead, then remove the placeholder so that a later real
``import tensorflow`` in the same process still works (it reuses the loaded modules).
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
    "tensorflow.core.protobuf.saved_model_pb2",
    "tensorflow.core.example.example_pb2",
)

_SERVING_MODULES = (
    "tensorflow_serving.apis.model_pb2",
    "tensorflow_serving.apis.predict_pb2",
    "tensorflow_serving.apis.get_model_metadata_pb2",
    "tensorflow_serving.apis.get_model_status_pb2",
    "tensorflow_serving.apis.model_management_pb2",
    "tensorflow_serving.apis.prediction_log_pb2",
    "tensorflow_serving.apis.classification_pb2",
    "tensorflow_serving.apis.regression_pb2",
)


@cache
def _load() -> None:
    placeholder = None
    if "tensorflow" not in sys.modules:
        spec = importlib.util.find_spec("tensorflow")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("the tensorflow package (its protobuf modules) is not installed")
        placeholder = types.ModuleType("tensorflow")
        placeholder.__path__ = list(spec.submodule_search_locations)
        sys.modules["tensorflow"] = placeholder
    try:
        for name in _TF_PROTO_MODULES + _SERVING_MODULES:
            importlib.import_module(name)
    finally:
        if placeholder is not None and sys.modules.get("tensorflow") is placeholder:
            del sys.modules["tensorflow"]


def module(name: str) -> types.ModuleType:
    """A generated protobuf module by dotted name, e.g. ``tensorflow_serving.apis.predict_pb2``."""
    _load()
    # Modules outside the preloaded list (grpc stubs) only import protos loaded above.
    return importlib.import_module(name)


def saved_model_pb2() -> types.ModuleType:
    return module("tensorflow.core.protobuf.saved_model_pb2")


def types_pb2() -> types.ModuleType:
    return module("tensorflow.core.framework.types_pb2")
