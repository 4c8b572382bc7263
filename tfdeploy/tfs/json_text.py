"""The text of tensorflow_model_server's REST answers (predict, classify, regress,
errors), byte for byte: the layout of rapidjson's ``PrettyWriter`` as TF Serving drives it
and TF Serving's number format.

The layout, which scripts reading ``curl`` output see::

    {
        "predictions": [2.5, 3.0, 4.5
        ]
    }

- four spaces per level; an object puts each member on a line of its own;
- a predict row (and a classify result, and a regress answer) is written with rapidjson's
  single-line-array option: its arrays stay on one line, ``", "`` between values, while
  objects inside it still break lines (``{"b64": ...}``, the members of a row of several
  outputs); the option is switched off after each row, so the closing ``]`` of
  ``predictions`` goes on a line of its own;
- columnar answers (``outputs``) never switch it on: one value per line.

Numbers (TF Serving's ``WriteDecimal``): integers as they are; a float as ``printf("%g")``
writes it (six significant digits: what absl's ``StrCat`` gives) when that reads back as
the same float32 (float64) value, else with 9 (17) significant digits; a whole number
without an exponent gets ``.0``; NaN and infinities as ``NaN``, ``Infinity``,
``-Infinity``.  So float32 0.1 is ``0.1``, not the ``0.10000000149011612`` a float64
conversion would write.

Strings are escaped as rapidjson escapes them (``\\"``, ``\\\\``, control characters,
``\\u001F`` in upper-case hex) and otherwise written as UTF-8.  Which strings become
``{"b64": ...}`` is ``json_tensors.as_text``'s rule.

Arrays are formatted whole and joined row by row, not value by value through the writer
(AMD EPYC, 2 cores, busy: a 513x513 int64 mask ~50 ms, ``json.dumps`` of its list ~30 ms;
350,000 float32 values ~250 ms against ~170 ms, for a third less text).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

from tfdeploy.tfs.codes import Code, StatusError
from tfdeploy.tfs.json_tensors import COLUMNAR, as_text

if TYPE_CHECKING:
    import numpy as np

_INDENT = 4
# rapidjson's escapes; and a byte that was not UTF-8 (kept as a lone surrogate by
# surrogateescape, e.g. in a model name from a URL) as its escape: JSON text cannot hold
# the raw byte tensorflow_model_server writes, and a client can turn \udcff back into it.
_ESCAPES = {i: f"\\u{i:04X}" for i in range(0x20)} | {
    0x08: "\\b", 0x09: "\\t", 0x0A: "\\n", 0x0C: "\\f", 0x0D: "\\r",
    ord('"'): '\\"', ord("\\"): "\\\\"} | {i: f"\\u{i:04x}" for i in range(0xDC80, 0xDD00)}


def quote(text: str) -> str:
    """A JSON string as rapidjson writes it."""
    return f'"{text.translate(_ESCAPES)}"'


class PrettyWriter:
    """rapidjson's ``PrettyWriter`` (indent 4), driven the way TF Serving drives it: the
    same events give the same text.  Values arrive as finished text (``raw``), laid out
    for the depth they are written at (``array_text``)."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._levels: list[list] = []  # per open container: [is_array, values so far]
        #: rapidjson's kFormatSingleLineArray, a writer-wide switch
        self.single_line = False

    @property
    def depth(self) -> int:
        """Containers open (inside an array opened now, values sit one deeper)."""
        return len(self._levels)

    def _prefix(self) -> None:
        if not self._levels:
            return
        level = self._levels[-1]
        count = level[1]
        if level[0]:
            if count:
                self._parts.append(", " if self.single_line else ",")
            if not self.single_line:
                self._parts.append("\n" + " " * (_INDENT * self.depth))
        else:
            if count:
                self._parts.append(",\n" if count % 2 == 0 else ": ")
            else:
                self._parts.append("\n")
            if count % 2 == 0:
                self._parts.append(" " * (_INDENT * self.depth))
        level[1] += 1

    def start_object(self) -> None:
        self._prefix()
        self._parts.append("{")
        self._levels.append([False, 0])

    def end_object(self) -> None:
        if self._levels.pop()[1]:
            self._parts.append("\n" + " " * (_INDENT * self.depth))
        self._parts.append("}")

    def start_array(self) -> None:
        self._prefix()
        self._parts.append("[")
        self._levels.append([True, 0])

    def end_array(self) -> None:
        if self._levels.pop()[1] and not self.single_line:
            self._parts.append("\n" + " " * (_INDENT * self.depth))
        self._parts.append("]")

    def key(self, name: str) -> None:
        self.raw(quote(name))

    def raw(self, text: str) -> None:
        """One value (or key), already text."""
        self._prefix()
        self._parts.append(text)

    def text(self) -> str:
        return "".join(self._parts)


def b64_text(data: bytes, depth: int) -> str:
    """``{"b64": ...}`` written at ``depth`` (containers open around it)."""
    inner = " " * (_INDENT * (depth + 1))
    return (f'{{\n{inner}"b64": "{base64.b64encode(data).decode("ascii")}"\n'
            f'{" " * (_INDENT * depth)}}}')


def decimals(values: np.ndarray) -> np.ndarray:
    """TF Serving's text of each float (see the module's docstring), as a str array of the
    same shape."""
    import numpy as np

    digits = 9 if values.dtype.itemsize <= 4 else 17
    kind = np.float32 if digits == 9 else np.float64
    flat = np.ascontiguousarray(values, dtype=kind).ravel()
    wide = flat.tolist()  # Python floats: their % formatting beats numpy's per element
    text = [f"{v:g}" for v in wide]
    back = np.array([float(t) for t in text], np.float64).astype(kind)
    with np.errstate(invalid="ignore"):
        redo = np.flatnonzero(np.isfinite(flat) & (back != flat)).tolist()
    full = f".{digits}g"
    for i in redo:
        text[i] = format(wide[i], full)
    for i, (t, v) in enumerate(zip(text, wide, strict=True)):
        if not math.isfinite(v):
            text[i] = "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
        elif "." not in t and "e" not in t:
            text[i] = t + ".0"
    return np.array(text, dtype=object).reshape(values.shape)


def value_texts(name: str, value: np.ndarray, depth: int) -> np.ndarray:
    """The text of every element of tensor ``name``'s ``value``, elements sitting
    ``depth`` containers deep (it matters for ``{"b64": ...}``).  Strings as
    ``json_tensors.as_text`` says."""
    import numpy as np

    value = np.asarray(value)  # a scalar output may come as a numpy scalar
    if value.dtype == np.bool_:
        return np.where(value, "true", "false")
    if value.dtype.kind in "iu":
        return value.astype(np.str_)
    if value.dtype.kind == "f":
        return decimals(value)

    def one(item) -> str:
        if isinstance(item, str):
            item = item.encode("utf-8")
        text = as_text(name, item)
        return b64_text(item, depth) if text is None else quote(text)

    return np.asarray(np.frompyfunc(one, 1, 1)(value), dtype=object)


def array_text(texts: np.ndarray, depth: int, single_line: bool) -> str:
    """``texts`` (an element text per value) as the nested arrays rapidjson writes when the
    outermost one opens with ``depth`` containers already open."""
    if texts.ndim == 0:
        return str(texts[()])
    inside = depth + 1
    if texts.ndim == 1:
        items = texts.tolist()
    else:
        items = [array_text(row, inside, single_line) for row in texts]
    if not items:
        return "[]"
    if single_line:
        return "[" + ", ".join(items) + "]"
    pad = "\n" + " " * (_INDENT * inside)
    return "[" + pad + ("," + pad).join(items) + "\n" + " " * (_INDENT * depth) + "]"


def _tensor(writer: PrettyWriter, name: str, value: np.ndarray) -> None:
    """One tensor (or one row of it) as the next value of ``writer``."""
    import numpy as np

    depth = writer.depth + np.ndim(value)  # where its innermost values sit
    writer.raw(array_text(value_texts(name, value, depth), writer.depth, writer.single_line))


def predict_text(outputs: Mapping[str, np.ndarray], fmt: str) -> str:
    """A predict answer: ``predictions`` (row format) or ``outputs`` (columnar)."""
    writer = PrettyWriter()
    writer.start_object()
    if fmt == COLUMNAR:
        writer.key("outputs")
        several = len(outputs) > 1
        if several:
            writer.start_object()
        for name, value in outputs.items():
            if several:
                writer.key(name)
            _tensor(writer, name, value)
        if several:
            writer.end_object()
        writer.end_object()
        return writer.text()
    sizes = {v.shape[0] if v.ndim else None for v in outputs.values()}
    if len(sizes) != 1 or None in sizes:
        raise StatusError(Code.INVALID_ARGUMENT,
                          "outputs differ in their first dimension; use the columnar "
                          '"inputs" format for this signature')
    (n,) = sizes
    several = len(outputs) > 1
    writer.key("predictions")
    writer.start_array()
    for i in range(n):
        if several:
            writer.start_object()
        writer.single_line = True
        for name, value in outputs.items():
            if several:
                writer.key(name)
            _tensor(writer, name, value[i, ...])
        writer.single_line = False
        if several:
            writer.end_object()
    writer.end_array()
    writer.end_object()
    return writer.text()


def _results(items, kind: str) -> PrettyWriter:
    """A writer with ``{"results":`` written, or INVALID_ARGUMENT when there are none."""
    if not items:
        raise StatusError(Code.INVALID_ARGUMENT, f"Cannot convert empty {kind}Results to JSON")
    writer = PrettyWriter()
    writer.start_object()
    writer.key("results")
    return writer


def classification_text(result) -> str:
    """A classify answer: ``{"results": [[[label, score], ...] per example]}`` (plural, as
    tensorflow_model_server sends it; its REST documentation shows "result")."""
    import numpy as np

    writer = _results(result.classifications, "Classification")
    writer.start_array()
    for classes in result.classifications:
        writer.single_line = True
        writer.start_array()
        scores = decimals(np.array([c.score for c in classes.classes], np.float32))
        for c, score in zip(classes.classes, scores, strict=True):
            writer.start_array()
            writer.raw(quote(c.label))
            writer.raw(score)
            writer.end_array()
        writer.end_array()
        writer.single_line = False
    writer.end_array()
    writer.end_object()
    return writer.text()


def regression_text(result) -> str:
    """A regress answer: ``{"results": [value per example]}``."""
    import numpy as np

    writer = _results(result.regressions, "Regression")
    writer.single_line = True
    writer.start_array()
    for text in decimals(np.array([r.value for r in result.regressions], np.float32)):
        writer.raw(text)
    writer.end_array()
    writer.end_object()
    return writer.text()


def error_text(message: str) -> str:
    """``{"error": message}`` as tensorflow_model_server writes it."""
    writer = PrettyWriter()
    writer.start_object()
    writer.key("error")
    writer.raw(quote(message))
    writer.end_object()
    return writer.text()
