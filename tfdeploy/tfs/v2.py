"""The Open Inference Protocol ("KServe v2"), TensorFlow-free: datatypes <-> numpy and TF
DataType enums, JSON tensors, the binary-tensor extension and the gRPC messages.

Triton, OpenVINO Model Server, KServe and MLServer speak this protocol; the embedded
server speaks it beside TF Serving's own API (``serving/v2_rest.py``, ``serving/v2_grpc.py``)
so their clients work unchanged.  Tensors travel as

- JSON: ``{"name", "datatype", "shape", "data"}`` with ``data`` flat (row-major) or
  nested; BYTES elements are strings;
- binary (the ``binary_data`` extension): the JSON header is followed by each tensor's raw
  little-endian bytes, the header's length in ``Inference-Header-Content-Length`` and each
  tensor's size in its ``binary_data_size`` parameter; a BYTES tensor is each element as a
  4-byte little-endian length and its bytes (so encoded images need no base64);
- gRPC: ``raw_input_contents`` / ``raw_output_contents`` in that same layout, or the typed
  ``contents`` fields.

The gRPC messages are built here from a descriptor written in Python (``grpc_messages``):
no generated module to keep in step with the installed protobuf, and no build step.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterable
from typing import Any

import numpy as np

from tfdeploy.tfs.codes import Code, StatusError

#: The header that gives the JSON part's length in a binary-extension body.
HEADER_LENGTH = "inference-header-content-length"

# v2 datatype <-> numpy dtype (BYTES: numpy object arrays of bytes)
_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8), "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64), "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64), "BYTES": np.dtype(object),
}
_BY_NUMPY = {dtype: name for name, dtype in _NUMPY.items()}
# TF DataType enum -> v2 datatype (the ones the server's tensors can be)
_BY_ENUM = {1: "FP32", 2: "FP64", 3: "INT32", 4: "UINT8", 5: "INT16", 6: "INT8",
            7: "BYTES", 9: "INT64", 10: "BOOL", 17: "UINT16", 19: "FP16", 22: "UINT32",
            23: "UINT64"}

#: The request parameter that picks a signature other than the default one.
SIGNATURE_PARAMETER = "signature_name"


def invalid(message: str) -> StatusError:
    return StatusError(Code.INVALID_ARGUMENT, message)


def datatype_of_enum(enum: int) -> str:
    """The v2 datatype of a TF DataType enum value (a SignatureDef's dtype)."""
    return _BY_ENUM.get(enum, "BYTES" if enum == 7 else f"DT_{enum}")


def enum_of_datatype(datatype: str) -> int:
    """The TF DataType enum value of a v2 datatype (for a SignatureDef-like table)."""
    for enum, name in _BY_ENUM.items():
        if name == datatype:
            return enum
    raise invalid(f"unsupported datatype {datatype!r}")


def datatype_of(array: np.ndarray) -> str:
    if array.dtype.kind in "OSU":
        return "BYTES"
    try:
        return _BY_NUMPY[array.dtype]
    except KeyError:
        raise invalid(f"no v2 datatype for numpy dtype {array.dtype}") from None


def numpy_dtype(datatype: str) -> np.dtype:
    try:
        return _NUMPY[datatype]
    except KeyError:
        raise invalid(f"unsupported datatype {datatype!r} (supported: "
                      f"{', '.join(_NUMPY)})") from None


def shape_of(tensor_shape) -> list[int]:
    """A TensorShapeProto as v2 metadata writes it: -1 for an unknown dimension, [-1] for
    an unknown rank."""
    if tensor_shape.unknown_rank:
        return [-1]
    return [int(d.size) for d in tensor_shape.dim]


def _shape(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, list | tuple) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value):
        raise invalid(f"{what}: 'shape' must be a list of non-negative integers")
    return tuple(value)


def _count(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64)) if shape else 1


def check_expected(name: str, datatype: str, expected: str | None) -> None:
    """INVALID_ARGUMENT when a tensor's datatype is not the signature's."""
    if expected is not None and datatype != expected:
        raise invalid(f"input '{name}': datatype {datatype} does not match the model's "
                      f"{expected}")


# -- BYTES serialization (binary extension and raw gRPC contents) ------------------------
def serialize_bytes(array: np.ndarray) -> bytes:
    """Each element as a 4-byte little-endian length and its bytes, row-major."""
    parts = []
    for item in array.flat:
        data = item.encode() if isinstance(item, str) else bytes(item)
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


def deserialize_bytes(raw: bytes | memoryview, count: int, what: str) -> np.ndarray:
    out = np.empty(count, dtype=object)
    view, offset = memoryview(raw), 0
    for i in range(count):
        if offset + 4 > len(view):
            raise invalid(f"{what}: BYTES data ends after {i} of {count} elements")
        (size,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if offset + size > len(view):
            raise invalid(f"{what}: BYTES element {i} declares {size} bytes, "
                          f"{len(view) - offset} remain")
        out[i] = bytes(view[offset:offset + size])
        offset += size
    if offset != len(view):
        raise invalid(f"{what}: {len(view) - offset} bytes after the {count} BYTES elements")
    return out


def from_raw(raw: bytes | memoryview, datatype: str, shape: tuple[int, ...],
             what: str) -> np.ndarray:
    """An array from a tensor's raw bytes (binary extension or ``raw_input_contents``);
    INVALID_ARGUMENT when their size does not match the shape."""
    dtype, count = numpy_dtype(datatype), _count(shape)
    if datatype == "BYTES":
        return deserialize_bytes(raw, count, what).reshape(shape)
    want = count * dtype.itemsize
    if len(raw) != want:
        raise invalid(f"{what}: expected {want} bytes of {datatype} data for shape "
                      f"{list(shape)}, got {len(raw)}")
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape)


def to_raw(array: np.ndarray) -> bytes:
    if array.dtype.kind in "OSU":
        return serialize_bytes(array)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


# -- JSON tensors ---------------------------------------------------------------------------
def _flat(data: Any) -> list:
    if isinstance(data, np.ndarray):
        return data.ravel().tolist()
    if not isinstance(data, list):
        return [data]
    out: list = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            if isinstance(item, np.ndarray):
                out.extend(item.ravel().tolist())
            else:
                out.append(item)
        else:
            stack.pop()
    return out


def from_json_data(data: Any, datatype: str, shape: tuple[int, ...], what: str) -> np.ndarray:
    """An array from a JSON tensor's ``data`` (flat or nested)."""
    dtype, count = numpy_dtype(datatype), _count(shape)
    if isinstance(data, np.ndarray) and datatype != "BYTES":
        values: Any = data.ravel()
    else:
        values = _flat(data)
    if len(values) != count:
        raise invalid(f"{what}: shape {list(shape)} holds {count} elements, data has "
                      f"{len(values)}")
    if datatype == "BYTES":
        out = np.empty(count, dtype=object)
        for i, item in enumerate(values):
            if isinstance(item, str):
                out[i] = item.encode("utf-8")
            elif isinstance(item, dict) and isinstance(item.get("b64"), str):
                import base64

                out[i] = base64.b64decode(item["b64"])
            else:
                raise invalid(f"{what}: BYTES data holds strings, got "
                              f"{type(item).__name__}")
        return out.reshape(shape)
    try:
        if datatype == "BOOL":
            if not all(isinstance(v, bool | np.bool_) for v in values):
                raise TypeError("not booleans")
        elif dtype.kind in "iu":
            if isinstance(values, np.ndarray):
                if values.dtype.kind not in "iu":
                    raise TypeError("not integers")
            elif not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                raise TypeError("not integers")
        elif not isinstance(values, np.ndarray) and not all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            raise TypeError("not numbers")
        array = np.asarray(values).astype(dtype, casting="unsafe") if dtype.kind == "f" \
            else np.asarray(values, dtype=dtype)
    except (TypeError, ValueError, OverflowError) as exc:
        raise invalid(f"{what}: data does not hold {datatype} values ({exc})") from None
    return array.reshape(shape)


def to_json_data(array: np.ndarray) -> list | None:
    """A flat JSON list of ``array``, or None when a BYTES element is not UTF-8 text (it
    then travels as binary data)."""
    if array.dtype.kind in "OSU":
        out = []
        for item in array.flat:
            if isinstance(item, str):
                out.append(item)
                continue
            try:
                out.append(bytes(item).decode("utf-8"))
            except UnicodeDecodeError:
                return None
        return out
    if array.dtype == np.float16:
        array = array.astype(np.float32)
    return array.ravel().tolist()


def _parameters(value: Any, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid(f"{what}: 'parameters' must be an object")
    return value


def parse_request(header: dict, binary: memoryview | None,
                  expected: dict[str, str]) -> tuple[dict[str, np.ndarray], dict]:
    """The inputs of a JSON infer request (``header``, the parsed JSON part) with its
    binary part, checked against ``expected`` (input name -> datatype; other names are
    left for the servable's check).  Returns (inputs, request parameters)."""
    params = _parameters(header.get("parameters"), "request")
    items = header.get("inputs")
    if not isinstance(items, list) or not items:
        raise invalid("request: 'inputs' must be a non-empty list of tensors")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise invalid("request: each input must be an object with a 'name'")
        name = item["name"]
        what = f"input '{name}'"
        if name in inputs:
            raise invalid(f"{what} appears twice")
        datatype = item.get("datatype")
        if not isinstance(datatype, str):
            raise invalid(f"{what}: 'datatype' must be a string")
        numpy_dtype(datatype)
        check_expected(name, datatype, expected.get(name))
        shape = _shape(item.get("shape"), what)
        size = _parameters(item.get("parameters"), what).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise invalid(f"{what}: binary_data_size must be a non-negative integer")
            if binary is None or offset + size > len(binary):
                have = 0 if binary is None else len(binary) - offset
                raise invalid(f"{what}: binary_data_size {size} but only {have} bytes of "
                              "binary data remain (truncated body?)")
            inputs[name] = from_raw(binary[offset:offset + size], datatype, shape, what)
            offset += size
        else:
            if "data" not in item:
                raise invalid(f"{what}: no 'data' and no binary_data_size parameter")
            inputs[name] = from_json_data(item["data"], datatype, shape, what)
    if binary is not None and offset != len(binary):
        raise invalid(f"request: {len(binary) - offset} bytes of binary data follow the "
                      "inputs that no binary_data_size accounts for")
    return inputs, params


def requested_outputs(header: dict) -> tuple[list[str], set[str], bool]:
    """(output names asked for, those asked as binary, all outputs binary)."""
    params = _parameters(header.get("parameters"), "request")
    all_binary = bool(params.get("binary_data_output", False))
    items = header.get("outputs") or []
    if not isinstance(items, list):
        raise invalid("request: 'outputs' must be a list")
    names, binary = [], set()
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise invalid("request: each requested output must be an object with a 'name'")
        names.append(item["name"])
        wants = _parameters(item.get("parameters"), f"output '{item['name']}'").get(
            "binary_data")
        if wants is True or (wants is None and all_binary):
            binary.add(item["name"])
    return names, binary, all_binary


def render_response(outputs: dict[str, np.ndarray], binary: set[str] | bool,
                    **fields: Any) -> tuple[bytes, int | None]:
    """The JSON response (``fields``: model_name, model_version, id) and, when any output
    travels as binary data, its bytes appended; returns (body, JSON length or None)."""
    import json

    tensors, blobs = [], []
    for name, array in outputs.items():
        entry: dict[str, Any] = {"name": name, "datatype": datatype_of(array),
                                 "shape": list(array.shape)}
        data = None if (binary is True or (binary and name in binary)) else \
            to_json_data(array)
        if data is None:
            raw = to_raw(array)
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = data
        tensors.append(entry)
    head = json.dumps({**{k: v for k, v in fields.items() if v is not None},
                       "outputs": tensors}, separators=(",", ":")).encode()
    if not blobs:
        return head, None
    return b"".join([head, *blobs]), len(head)


def split_body(raw: bytes, header_length: str | None) -> tuple[bytes, memoryview | None]:
    """(JSON part, binary part or None) of a request body by its
    ``Inference-Header-Content-Length``."""
    if header_length is None:
        return raw, None
    try:
        length = int(header_length)
    except ValueError:
        raise invalid(f"Inference-Header-Content-Length: not an integer: "
                      f"{header_length!r}") from None
    if not 0 <= length <= len(raw):
        raise invalid(f"Inference-Header-Content-Length {length} exceeds the body of "
                      f"{len(raw)} bytes (truncated body?)")
    return raw[:length], memoryview(raw)[length:]


# -- gRPC ----------------------------------------------------------------------------------
PACKAGE = "inference"
SERVICE = "GRPCInferenceService"

# (message, [(field, number, type, label, type_name)]): the protocol's grpc_service.proto,
# field numbers as the protocol defines them.  "m:" marks a map<string, InferParameter>.
_T = {"bool": 8, "int32": 5, "int64": 3, "uint32": 13, "uint64": 4, "float": 2,
      "double": 1, "string": 9, "bytes": 12, "msg": 11}
_PARAMS = ("m", "InferParameter")
_TENSOR_FIELDS = [("name", 1, "string"), ("datatype", 2, "string"),
                  ("shape", 3, "int64*"), ("parameters", 4, _PARAMS),
                  ("contents", 5, "InferTensorContents")]
_MESSAGES: dict[str, list] = {
    "ServerLiveRequest": [], "ServerLiveResponse": [("live", 1, "bool")],
    "ServerReadyRequest": [], "ServerReadyResponse": [("ready", 1, "bool")],
    "ModelReadyRequest": [("name", 1, "string"), ("version", 2, "string")],
    "ModelReadyResponse": [("ready", 1, "bool")],
    "ServerMetadataRequest": [],
    "ServerMetadataResponse": [("name", 1, "string"), ("version", 2, "string"),
                               ("extensions", 3, "string*")],
    "ModelMetadataRequest": [("name", 1, "string"), ("version", 2, "string")],
    "ModelMetadataResponse.TensorMetadata": [("name", 1, "string"),
                                             ("datatype", 2, "string"),
                                             ("shape", 3, "int64*")],
    "ModelMetadataResponse": [("name", 1, "string"), ("versions", 2, "string*"),
                              ("platform", 3, "string"),
                              ("inputs", 4, "ModelMetadataResponse.TensorMetadata*"),
                              ("outputs", 5, "ModelMetadataResponse.TensorMetadata*")],
    "ModelInferRequest.InferInputTensor": _TENSOR_FIELDS,
    "ModelInferRequest.InferRequestedOutputTensor": [("name", 1, "string"),
                                                     ("parameters", 2, _PARAMS)],
    "ModelInferRequest": [("model_name", 1, "string"), ("model_version", 2, "string"),
                          ("id", 3, "string"), ("parameters", 4, _PARAMS),
                          ("inputs", 5, "ModelInferRequest.InferInputTensor*"),
                          ("outputs", 6, "ModelInferRequest.InferRequestedOutputTensor*"),
                          ("raw_input_contents", 7, "bytes*")],
    "ModelInferResponse.InferOutputTensor": _TENSOR_FIELDS,
    "ModelInferResponse": [("model_name", 1, "string"), ("model_version", 2, "string"),
                           ("id", 3, "string"), ("parameters", 4, _PARAMS),
                           ("outputs", 5, "ModelInferResponse.InferOutputTensor*"),
                           ("raw_output_contents", 6, "bytes*")],
    "InferParameter": [("bool_param", 1, "bool?"), ("int64_param", 2, "int64?"),
                       ("string_param", 3, "string?"), ("double_param", 4, "double?"),
                       ("uint64_param", 5, "uint64?")],
    "InferTensorContents": [("bool_contents", 1, "bool*"), ("int_contents", 2, "int32*"),
                            ("int64_contents", 3, "int64*"), ("uint_contents", 4, "uint32*"),
                            ("uint64_contents", 5, "uint64*"),
                            ("fp32_contents", 6, "float*"), ("fp64_contents", 7, "double*"),
                            ("bytes_contents", 8, "bytes*")],
}
#: rpc name -> (request, response) of GRPCInferenceService
RPCS = {"ServerLive": ("ServerLiveRequest", "ServerLiveResponse"),
        "ServerReady": ("ServerReadyRequest", "ServerReadyResponse"),
        "ModelReady": ("ModelReadyRequest", "ModelReadyResponse"),
        "ServerMetadata": ("ServerMetadataRequest", "ServerMetadataResponse"),
        "ModelMetadata": ("ModelMetadataRequest", "ModelMetadataResponse"),
        "ModelInfer": ("ModelInferRequest", "ModelInferResponse")}


def _file_descriptor():
    from google.protobuf import descriptor_pb2

    fd = descriptor_pb2.FileDescriptorProto(name="tfdeploy/v2/grpc_service.proto",
                                            package=PACKAGE, syntax="proto3")
    made: dict[str, Any] = {}

    def message(path: str):
        if path in made:
            return made[path]
        parent, _, leaf = path.rpartition(".")
        container = message(parent).nested_type if parent else fd.message_type
        made[path] = msg = container.add(name=leaf)
        return msg

    for path, fields in _MESSAGES.items():
        msg = message(path)
        for name, number, kind in fields:
            f = msg.field.add(name=name, number=number, json_name=_camel(name))
            if isinstance(kind, tuple):  # map<string, InferParameter>
                entry = msg.nested_type.add(name=_camel(name, True) + "Entry")
                entry.options.map_entry = True
                entry.field.add(name="key", number=1, type=_T["string"], label=1,
                                json_name="key")
                entry.field.add(name="value", number=2, type=_T["msg"], label=1,
                                type_name=f".{PACKAGE}.{kind[1]}", json_name="value")
                f.type, f.label = _T["msg"], 3
                f.type_name = f".{PACKAGE}.{path}.{entry.name}"
                continue
            base, repeated, oneof = kind.rstrip("*?"), kind.endswith("*"), kind.endswith("?")
            f.label = 3 if repeated else 1
            if base in _T:
                f.type = _T[base]
            else:
                f.type, f.type_name = _T["msg"], f".{PACKAGE}.{base}"
            if oneof:
                if not msg.oneof_decl:
                    msg.oneof_decl.add(name="parameter_choice")
                f.oneof_index = 0
    service = fd.service.add(name=SERVICE)
    for rpc, (request, response) in RPCS.items():
        service.method.add(name=rpc, input_type=f".{PACKAGE}.{request}",
                           output_type=f".{PACKAGE}.{response}")
    return fd


def _camel(name: str, upper: bool = False) -> str:
    parts = name.split("_")
    head = parts[0].capitalize() if upper else parts[0]
    return head + "".join(p.capitalize() for p in parts[1:])


@functools.cache
def grpc_messages() -> dict[str, type]:
    """Message classes of the protocol's gRPC service by name (nested ones dotted), in a
    descriptor pool of their own so they never clash with another module's."""
    from google.protobuf import descriptor_pool, message_factory

    pool = descriptor_pool.DescriptorPool()
    pool.Add(_file_descriptor())
    out = {}
    for path in _MESSAGES:
        out[path] = message_factory.GetMessageClass(
            pool.FindMessageTypeByName(f"{PACKAGE}.{path}"))
    return out


_CONTENTS = {"BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
             "UINT32": "uint_contents", "UINT64": "uint64_contents",
             "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
             "INT64": "int64_contents", "FP16": None, "FP32": "fp32_contents",
             "FP64": "fp64_contents", "BYTES": "bytes_contents"}


def parameter_value(parameter) -> Any:
    kind = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, kind) if kind else None


def parse_grpc_request(request, expected: dict[str, str]) -> dict[str, np.ndarray]:
    """The inputs of a ModelInferRequest: ``raw_input_contents`` (one per input, in order)
    or each input's typed ``contents``."""
    if not request.inputs:
        raise invalid("request: no inputs")
    return _grpc_tensors(request.inputs, list(request.raw_input_contents), expected,
                         "input", "raw_input_contents")


def parse_grpc_response(response) -> dict[str, np.ndarray]:
    """The outputs of a ModelInferResponse, from ``raw_output_contents`` (as Triton and
    the embedded server answer) or each output's typed ``contents`` (as some KServe
    runtimes do): the client side of ``fill_grpc_response``."""
    return _grpc_tensors(response.outputs, list(response.raw_output_contents), {},
                         "output", "raw_output_contents")


def _grpc_tensors(items, raw: list[bytes], expected: dict[str, str], kind: str,
                  raw_field: str) -> dict[str, np.ndarray]:
    if raw and len(raw) != len(items):
        raise invalid(f"{kind}s: {len(raw)} {raw_field} for {len(items)} {kind}s")
    out: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(items):
        what = f"{kind} '{tensor.name}'"
        if tensor.name in out:
            raise invalid(f"{what} appears twice")
        numpy_dtype(tensor.datatype)
        check_expected(tensor.name, tensor.datatype, expected.get(tensor.name))
        shape = tuple(int(d) for d in tensor.shape)
        if any(d < 0 for d in shape):
            raise invalid(f"{what}: 'shape' must hold non-negative integers")
        if raw:
            out[tensor.name] = from_raw(raw[i], tensor.datatype, shape, what)
            continue
        field = _CONTENTS[tensor.datatype]
        if field is None:
            raise invalid(f"{what}: FP16 data travels in {raw_field}")
        values = getattr(tensor.contents, field)
        if tensor.datatype == "BYTES":
            out[tensor.name] = _bytes_array(values, shape, what)
        else:
            if len(values) != _count(shape):
                raise invalid(f"{what}: shape {list(shape)} holds {_count(shape)} elements, "
                              f"contents have {len(values)}")
            out[tensor.name] = np.asarray(values, dtype=numpy_dtype(tensor.datatype)
                                          ).reshape(shape)
    return out


def grpc_infer_request(model: str, version: int | None, inputs: dict[str, np.ndarray],
                       signature: str = "", outputs: Iterable[str] = ()):
    """A ModelInferRequest with every input in ``raw_input_contents`` (the layout the
    server reads fastest, BYTES as length-prefixed elements); ``signature`` other than
    "" travels in the ``signature_name`` parameter."""
    request = grpc_messages()["ModelInferRequest"](
        model_name=model, model_version="" if version is None else str(version))
    for name, value in inputs.items():
        array = np.asarray(value)
        if array.dtype.kind in "SU":
            array = array.astype(object)
        request.inputs.add(name=name, datatype=datatype_of(array),
                           shape=[int(d) for d in array.shape])
        request.raw_input_contents.append(to_raw(array))
    if signature:
        request.parameters[SIGNATURE_PARAMETER].string_param = signature
    for name in outputs:
        request.outputs.add(name=name)
    return request


def _bytes_array(values: Iterable[bytes], shape: tuple[int, ...], what: str) -> np.ndarray:
    items = list(values)
    if len(items) != _count(shape):
        raise invalid(f"{what}: shape {list(shape)} holds {_count(shape)} elements, "
                      f"contents have {len(items)}")
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out.reshape(shape)


def fill_grpc_response(response, outputs: dict[str, np.ndarray]) -> None:
    """Outputs in ``raw_output_contents`` (as Triton answers; both clients read it)."""
    for name, array in outputs.items():
        tensor = response.outputs.add(name=name, datatype=datatype_of(array))
        tensor.shape.extend(int(d) for d in array.shape)
        response.raw_output_contents.append(to_raw(array))
