"""TF Serving's REST JSON codec, one implementation for the server and the client.

Request bodies come in the row format (``{"instances": [...]}``) or the columnar format
(``{"inputs": ...}``); responses answer in the same format (``predictions`` or
``outputs``).  Binary values travel as ``{"b64": "..."}``; string outputs are UTF-8 text
when they decode, else ``{"b64": ...}``, and always ``{"b64": ...}`` for tensor names
ending in ``_bytes``.  Response protos (status, metadata) use protobuf's JSON mapping with
the ``.proto`` field names.

numpy is imported only by the functions that build arrays, so a client that sends and
receives encoded images (``encoded_image_body``, ``decode_bytes``) never loads it.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from tfdeploy.tfs.codes import Code, StatusError

if TYPE_CHECKING:
    import numpy as np

ROW, COLUMNAR = "row", "columnar"


def _bad(message: str) -> StatusError:
    return StatusError(Code.INVALID_ARGUMENT, message)


# -- values ------------------------------------------------------------------------------
def decode_bytes(value: Any) -> Any:
    """Replace every ``{"b64": ...}`` (and every string) in a nested JSON value with bytes."""
    if isinstance(value, dict):
        if set(value) == {"b64"} and isinstance(value["b64"], str):
            try:
                return base64.b64decode(value["b64"], validate=True)
            except (binascii.Error, ValueError):
                raise _bad("invalid base64 in b64 value") from None
        raise _bad(f"unexpected JSON object {sorted(value)[:3]}; only "
                   '{"b64": ...} objects are allowed in tensor values')
    if isinstance(value, list):
        return [decode_bytes(v) for v in value]
    if isinstance(value, str):
        return value.encode("utf-8")
    return value


def b64(value: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(value).decode("ascii")}


def _has_str(value: Any) -> bool:
    while isinstance(value, list) and value:
        value = value[0]
    return isinstance(value, str | dict)


def to_array(name: str, value: Any, dtype: int | None) -> np.ndarray:
    """A JSON tensor value as a numpy array of the DataType enum ``dtype`` (None: as JSON
    types suggest).  Raises INVALID_ARGUMENT naming the tensor when it does not fit."""
    import numpy as np

    from tfdeploy.tfs import tensors

    want = tensors.numpy_dtype(dtype) if dtype is not None else None
    try:
        if want is not None and want.kind == "O":
            array = np.array(decode_bytes(value), dtype=object)
            if array.dtype != object or any(not isinstance(v, bytes) for v in array.flat):
                raise ValueError('expected strings or {"b64": ...} values')
            return array
        if want is None and _has_str(value):
            return np.array(decode_bytes(value), dtype=object)
        if isinstance(value, str) or (isinstance(value, list) and _has_str(value)):
            leaf = value
            while isinstance(leaf, list) and leaf:
                leaf = leaf[0]
            kind = tensors.dtype_name(dtype) if dtype is not None else "a number"
            raise _bad(f"input {name!r}: JSON Value: {json.dumps(leaf)} Type: String is not "
                       f"of expected type: {kind}")
        if hasattr(value, "dtype") and want is not None and want.kind in "iu" and value.size:
            _check_range(value, want)  # as np.asarray refuses such JSON numbers
        return np.asarray(value, dtype=want)
    except StatusError:
        raise
    except (ValueError, TypeError, OverflowError) as exc:
        reason = str(exc).splitlines()[0]
        if "inhomogeneous" in reason or "sequence" in reason:
            reason = "lists of unequal length (ragged tensor)"
        kind = tensors.dtype_name(dtype) if dtype is not None else "a tensor"
        raise _bad(f"input {name!r}: cannot convert to {kind}: {reason}") from None


def _check_range(value: np.ndarray, want: np.dtype) -> None:
    """An array from json_body.parse_body cast to an integer dtype would wrap silently;
    refuse what the same numbers as JSON lists are refused for."""
    import numpy as np

    low, high = value.min(), value.max()
    if value.dtype.kind == "f" and not (np.isfinite(low) and np.isfinite(high)):
        raise OverflowError("cannot convert float infinity to integer")
    info = np.iinfo(want)
    if low < info.min or high > info.max:
        first = value.flat[np.argmax((value < info.min) | (value > info.max))]
        raise OverflowError(f"Python integer {first} out of bounds for {want}")


def as_text(name: str, value: bytes, force_b64: bool = False) -> str | None:
    """One string element of tensor ``name`` as JSON text, or None when it travels as
    ``{"b64": ...}`` instead: not UTF-8, or a name ending in ``_bytes`` (or ``force_b64``)."""
    if force_b64 or name.endswith("_bytes"):
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


def to_json(name: str, value: Any, force_b64: bool = False) -> Any:
    """JSON for an array (or one string element) of tensor ``name``."""

    def enc(v: bytes):
        text = as_text(name, v, force_b64)
        return b64(v) if text is None else text

    if isinstance(value, bytes):
        return enc(value)
    if value.dtype.kind == "O":
        import numpy as np

        return np.frompyfunc(enc, 1, 1)(value).tolist() if value.ndim else enc(value.item())
    return value.tolist()


# -- requests ----------------------------------------------------------------------------
def predict_body(signature: str, inputs: Mapping[str, np.ndarray]) -> dict:
    """A columnar predict request; string tensors always as ``{"b64": ...}``."""
    return {"signature_name": signature,
            "inputs": {k: to_json(k, v, force_b64=True) for k, v in inputs.items()}}


def encoded_image_body(signature: str, images: Iterable[bytes]) -> dict:
    """A row-format predict request of encoded images; no numpy needed.  Row format, so
    the answer is too: tensorflow_model_server writes a row's arrays on one line but a
    columnar answer one value per line, and a 513x513 mask as ``outputs`` is ~6 MB of
    JSON against ~1 MB as ``predictions`` (json_text)."""
    return {"signature_name": signature, "instances": [b64(i) for i in images]}


def first_row_value(body: dict, name: str) -> Any:
    """Output ``name`` of the first row of a row-format answer (a row of a one-output
    signature is that output's value itself)."""
    row = body["predictions"][0]
    return row[name] if isinstance(row, dict) and name in row else row


def parse_predict(body: dict, signature_def) -> tuple[dict[str, np.ndarray], str]:
    """Row (``instances``) or columnar (``inputs``) request -> (named arrays, format),
    with each input converted to the dtype ``signature_def`` declares for it."""
    if "instances" not in body and "inputs" not in body:
        raise _bad("Missing 'inputs' or 'instances' key")
    if "instances" in body and "inputs" in body:
        raise _bad("Not formatted correctly expecting only one of 'inputs' or 'instances' "
                   "keys exists")
    names = sorted(signature_def.inputs)
    if "instances" in body:
        rows = body["instances"]
        array = getattr(rows, "ndim", 0) > 0  # numbers as json_body.parse_body gives them
        if not (isinstance(rows, list) or array) or not len(rows):
            raise _bad('"instances" must be a non-empty list')
        if not array and all(isinstance(r, dict) and "b64" not in r for r in rows):
            keys = set(rows[0])
            if any(set(r) != keys for r in rows):
                raise _bad("every instance must name the same inputs")
            columns = {k: [r[k] for r in rows] for k in keys}
        elif len(names) == 1:
            columns = {names[0]: rows}
        else:
            raise _bad(f"signature has {len(names)} inputs ({', '.join(names)}); "
                       "each instance must be an object naming them")
        return {k: _input(k, v, signature_def) for k, v in columns.items()}, ROW
    inputs = body["inputs"]
    if not isinstance(inputs, dict) or (set(inputs) == {"b64"}):
        if len(names) != 1:
            raise _bad(f'signature has {len(names)} inputs; "inputs" must be an object '
                       "naming them")
        inputs = {names[0]: inputs}
    return {k: _input(k, v, signature_def) for k, v in inputs.items()}, COLUMNAR


def _input(name: str, value: Any, signature_def) -> np.ndarray:
    if name not in signature_def.inputs:
        raise _bad(f"input {name!r} is not in the signature (inputs: "
                   f"{', '.join(sorted(signature_def.inputs))})")
    return to_array(name, value, signature_def.inputs[name].dtype)


# -- responses (their text: json_text) -------------------------------------------------
def parse_outputs(body: dict, dtypes: Mapping[str, int] | None = None,
                  outputs: list[str] | None = None) -> dict[str, np.ndarray]:
    """A columnar response (``{"outputs": ...}``) -> named arrays.  JSON loses dtypes, so
    ``dtypes`` (key -> DataType enum, from the signature) restores them; with one output
    the server sends its value bare, named here ``outputs[0]``."""
    out = body.get("outputs")
    if out is None:
        raise StatusError(Code.INTERNAL, 'response has no "outputs"')
    if not isinstance(out, dict):
        out = {(outputs or ["output"])[0]: out}
    dtypes = dtypes or {}
    arrays = {k: to_array(k, v, dtypes.get(k)) for k, v in out.items()}
    missing = [k for k in outputs or () if k not in arrays]
    if missing:
        raise StatusError(Code.INTERNAL, f"response has no output {missing[0]!r}")
    return {k: arrays[k] for k in (outputs or arrays)}


def json_to_message(value: dict, message):
    """Fill ``message`` from its REST JSON (status and metadata answers, as
    ``proto_json`` writes them)."""
    from google.protobuf import json_format

    return json_format.ParseDict(value, message, ignore_unknown_fields=True)


# -- classify and regress ----------------------------------------------------------------
def _feature_kind(value: Any, name: str) -> str:
    """The Feature list a JSON value goes in: bools and integers int64, other numbers
    float, strings and ``{"b64": ...}`` bytes."""
    if isinstance(value, bool) or isinstance(value, int):
        return "int64_list"
    if isinstance(value, float):
        return "float_list"
    if isinstance(value, str) or (isinstance(value, dict) and set(value) == {"b64"}):
        return "bytes_list"
    kind = "null" if value is None else type(value).__name__
    raise _bad(f"Feature: {name} has element with unexpected JSON type: {kind}")


_KIND_NAMES = {"int64_list": "int64", "float_list": "float", "bytes_list": "bytes"}


def _fill_example(value: Any, example) -> None:
    if not isinstance(value, dict):
        raise _bad(f"Example must be JSON object but got JSON {type(value).__name__}")
    for name, content in value.items():
        feature = example.features.feature[name]
        for item in content if isinstance(content, list) else [content]:
            kind = _feature_kind(item, name)
            current = feature.WhichOneof("kind")
            if current is not None and current != kind:
                raise _bad(f"Unexpected element type in feature: {name} expecting type: "
                           f"{_KIND_NAMES[current]}")
            values = getattr(feature, kind).value
            if kind == "bytes_list":
                values.append(decode_bytes(item))
            elif kind == "int64_list":
                if item >= 1 << 63:
                    raise _bad(f"Feature: {name} has uint64_t element. Only int64_t is "
                               "supported.")
                values.append(int(item))
            else:
                values.append(item)


def fill_example_request(body: dict, request) -> None:
    """A Classification or Regression request from TF Serving's REST body:
    ``{"signature_name": ..., "context": {features}, "examples": [{features}, ...]}``,
    features as JSON numbers (int64 or float), strings or ``{"b64": ...}``."""
    signature = body.get("signature_name", "")
    if not isinstance(signature, str):
        raise _bad("'signature_name' key must be a string")
    request.model_spec.signature_name = signature
    examples = body.get("examples")
    if "context" in body:
        _fill_example(body["context"], request.input.example_list_with_context.context)
        target = request.input.example_list_with_context.examples
    else:
        target = request.input.example_list.examples
    if examples is None:
        raise _bad("When method is classify, key 'examples' is expected and was not found")
    if not isinstance(examples, list):
        raise _bad("Expecting 'examples' value to be an list/array")
    if not examples:
        raise _bad("'examples' value is an empty array")
    for value in examples:
        _fill_example(value, target.add())
