"""The text of tensorflow_model_server's REST status and metadata answers: protobuf's C++
JSON printer (``MessageToJsonString``) with ``add_whitespace`` and
``always_print_fields_with_no_presence``, as TF Serving calls it.

The layout, which TF Serving's own REST guide shows for a status answer::

    {
     "model_version_status": [
      {
       "version": "1",
       ...
      }
     ]
    }

- one space per level; every member and array element on a line of its own; ``": "``
  after a key; an empty object or array as ``{}`` / ``[]``; a newline after the whole;
- fields in field-number order: the set ones, and those without presence (repeated,
  maps, proto3 scalars) even when empty; a message field only when set;
- int64 and uint64 as quoted strings, enums by name, bytes as base64, a wrapper (the
  model spec's ``version``) as its bare value; floats with 6 (float) or 15 (double)
  ``%g`` digits when that reads back the same, else 9 or 17 (a subnormal float always
  9: ``strtof`` reports a range error), NaN and infinities quoted;
- strings as UTF-8, with JSON's escapes, ``\\u`` (lower-case hex) for control characters
  and the characters the printer keeps out of JavaScript (``<``, ``>``, U+2028, ...).

Map entries come in the C++ map's iteration order there, which nothing fixes; here they
are sorted by key, so the same model always gives the same text.

Metadata is not one message: TF Serving prints the model spec and the signature map
apart (field names as in the .proto) and joins them by hand (``metadata_text``).
"""

from __future__ import annotations

import base64
import math
import struct
from typing import Any

__all__ = ["message_text", "metadata_text"]

# protobuf FieldDescriptor constants (stable across protobuf versions)
_DOUBLE, _FLOAT, _INT64, _UINT64, _INT32, _FIXED64, _FIXED32, _BOOL, _STRING = range(1, 10)
_GROUP, _MESSAGE, _BYTES, _UINT32, _ENUM, _SFIXED32, _SFIXED64, _SINT32, _SINT64 = \
    range(10, 19)
_FLT_MIN = 1.1754943508222875e-38  # the smallest normal float32
_QUOTED_INTS = {_INT64, _UINT64, _FIXED64, _SFIXED64, _SINT64}
_WRAPPERS = {f"google.protobuf.{n}Value" for n in (
    "Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")}


def _repeated(field) -> bool:
    """``is_repeated`` (protobuf >= 5; ``label`` is gone from 7 on)."""
    repeated = getattr(field, "is_repeated", None)
    return repeated if repeated is not None else field.label == field.LABEL_REPEATED


def _u_escape(code: int) -> str:
    """``\\uXXXX`` in lower-case hex; a code point beyond the BMP as its UTF-16 pair."""
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


# What the C++ printer escapes, as a str.translate table (as json_text.quote does for
# rapidjson): JSON's own escapes, then \u for control characters and the code points it
# keeps out of JavaScript; a byte that was not UTF-8 (kept by surrogateescape as a lone
# surrogate) becomes a space, as the printer writes a decoding failure.
_ESCAPES = {code: _u_escape(code) for lo, hi in (
    (0x0, 0x1F), (0x7F, 0x9F), (0x600, 0x603), (0x200B, 0x200F), (0x2028, 0x202E),
    (0x2060, 0x2064), (0x206A, 0x206F), (0x1D173, 0x1D17A), (0xE0020, 0xE007F))
    for code in range(lo, hi + 1)} | {code: _u_escape(code) for code in (
        0x3C, 0x3E, 0xFEFF, 0xFFF9, 0xFFFA, 0xFFFB, 0xAD, 0x6DD, 0x70F, 0x17B4, 0x17B5,
        0xE0001)} | {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t", 0x22: '\\"', 0x0C: "\\f",
                     0x08: "\\b", 0x5C: "\\\\"} | {code: " " for code in range(0xDC80, 0xDD00)}


def quote(text: str) -> str:
    """A string as the C++ printer quotes it (``text`` already decoded from UTF-8)."""
    return '"' + text.translate(_ESCAPES) + '"'


def _float_text(value: float, single: bool) -> str:
    if math.isnan(value):
        return '"NaN"'
    if math.isinf(value):
        return '"Infinity"' if value > 0 else '"-Infinity"'
    short, full = (6, 9) if single else (15, 17)
    text = f"{value:.{short}g}"
    if single:  # strtof's range error on a subnormal counts as not reading back
        same = (struct.unpack("f", struct.pack("f", float(text)))[0] == value
                and (value == 0 or abs(value) >= _FLT_MIN))
    else:
        same = float(text) == value
    return text if same else f"{value:.{full}g}"


class _Printer:
    def __init__(self, proto_names: bool) -> None:
        self.proto_names = proto_names
        self.parts: list[str] = []
        self.depth = 0

    def newline(self) -> None:
        self.parts.append("\n" + " " * self.depth)

    def container(self, opening: str, closing: str, items) -> None:
        """``items``: callables, each writing one member or element."""
        self.parts.append(opening)
        self.depth += 1
        first = True
        for write in items:
            if not first:
                self.parts.append(",")
            first = False
            self.newline()
            write()
        self.depth -= 1
        if not first:
            self.newline()
        self.parts.append(closing)

    def scalar(self, field, value: Any) -> None:
        kind = field.type
        if kind == _MESSAGE or kind == _GROUP:
            self.message(value)
        elif kind == _ENUM:
            named = field.enum_type.values_by_number.get(value)
            self.parts.append(quote(named.name) if named is not None else str(value))
        elif kind in _QUOTED_INTS:
            self.parts.append(f'"{value}"')
        elif kind == _BOOL:
            self.parts.append("true" if value else "false")
        elif kind == _STRING:
            self.parts.append(quote(value))
        elif kind == _BYTES:
            self.parts.append('"' + base64.b64encode(value).decode("ascii") + '"')
        elif kind in (_FLOAT, _DOUBLE):
            self.parts.append(_float_text(value, kind == _FLOAT))
        else:
            self.parts.append(str(value))

    def message(self, message) -> None:
        descriptor = message.DESCRIPTOR
        if descriptor.full_name in _WRAPPERS:
            self.scalar(descriptor.fields_by_name["value"], message.value)
            return
        shown = sorted((f for f in descriptor.fields if self._shown(message, f)),
                       key=lambda f: f.number)
        self.container("{", "}", [self._member(message, f) for f in shown])

    @staticmethod
    def _shown(message, field) -> bool:
        return _repeated(field) or not field.has_presence or message.HasField(field.name)

    def _member(self, message, field):
        def write() -> None:
            name = field.name if self.proto_names else field.json_name
            self.parts.append(quote(name) + ": ")
            value = getattr(message, field.name)
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                self._map(field, value)
            elif _repeated(field):
                self.container("[", "]", [
                    (lambda item=item: self.scalar(field, item)) for item in value])
            else:
                self.scalar(field, value)
        return write

    def _map(self, field, value) -> None:
        key_field, value_field = (field.message_type.fields_by_name[n]
                                  for n in ("key", "value"))

        def entry(key) -> Any:
            def write() -> None:
                key_text = ("true" if key else "false") if key_field.type == _BOOL \
                    else str(key)
                self.parts.append(quote(key_text) + ": ")
                self.scalar(value_field, value[key])
            return write
        self.container("{", "}", [entry(k) for k in sorted(value)])


def message_text(message, proto_names: bool = False) -> str:
    """``message`` as TF Serving prints it in a REST answer (``proto_names``: field names
    as in the .proto, else their JSON names, which TF Serving's protos set to the same)."""
    printer = _Printer(proto_names)
    printer.message(message)
    printer.parts.append("\n")
    return "".join(printer.parts)


def metadata_text(model_spec, signature_def_map) -> str:
    """A GetModelMetadata REST answer: the model spec and the ``SignatureDefMap``,
    printed apart and joined as tensorflow_model_server joins them."""
    return ("{\n" f'"model_spec":{message_text(model_spec, True)},\n'
            f'"metadata": {{"signature_def": {message_text(signature_def_map, True)}}}\n'
            "}\n")
