"""Request bodies parsed like ``json.loads``, with big numeric arrays as numpy arrays.

Python's json makes a float object (24 bytes) plus a list slot per number, so a 191 MB
numeric body cost 4.3 GB of RSS and stalled the server; and a deeply nested body makes it
raise RecursionError (a 500) instead of a clean 400.  ``parse_body`` therefore:

1. scans the body once (vectorised, a chunk at a time, no Python object per token) for
   which bytes are inside strings, its nesting depth (more than ``max_depth`` levels are
   refused before any recursive parser sees them) and the runs of numeric characters;
2. finds bracketed regions of at least ``THRESHOLD`` bytes in those runs that hold only
   numbers, checks their syntax and shape with numpy (per chunk, so temporaries stay
   small) and parses the numbers with ``np.fromstring`` into one preallocated array;
3. estimates from the same counts what the rest (each region replaced by a placeholder
   string) would cost as Python objects, and refuses it when that is more than
   ``COST_RATIO`` x the body plus ``COST_SLACK``: tiny values (``[{}, {}, ...]``,
   ``["ab", ...]``) cost 15-40x their text, so a 30 MB body grew the server by 0.9 GB
   before its 400;
4. hands that rest to ``json.loads`` and puts the arrays where the placeholders were.

The result equals ``json.loads(raw)`` once arrays are turned back into lists, with these
documented differences: a region is float64 when any of its numbers has '.', 'e' or 'E',
else int64 (``1`` in a float region is ``1.0``); a big region that is valid JSON but not
rectangular (lists of unequal length, its numbers all at one depth) is a ``BodyError`` (no
tensor can be made of it, and TF Serving refuses it too), while one that mixes numbers and
lists (``[1, [2, 3]]``) stays a list, its big rectangular parts arrays; a region with an
integer of 19 or more digits (int64 could overflow) and any region with a syntax error are
left to ``json.loads``, which keeps exact values and exact error messages.  Errors read like TF
Serving's (``JSON Parse error: <reason> at offset: <byte offset>``,
tensorflow_serving/util/json_tensor.cc), with json's reasons.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

import numpy as np

THRESHOLD = 4096          # regions smaller than this go through json: no gain below it
COST_RATIO = 2.0          # the parsed value may cost this many times the body ...
COST_SLACK = 4 << 20      # ... plus this (small bodies are never refused for it)
_CHUNK = 1 << 18          # bytes per vectorised step; bounds the temporaries
_SCAN_CHUNK = 1 << 18     # the same for _scan, whose temporaries are ~30 bytes per byte

_JSON_WS = b" \t\n\r"
_SEPARATOR = re.compile(rb"[\[\], \t\n\r]")
_LEADING_OPENS = re.compile(rb"\[*")


class BodyError(ValueError):
    """A body that gets a 400 INVALID_ARGUMENT answer; the message says why."""


class _Mixed(Exception):
    """A valid array of numbers and lists at different depths: not one tensor."""


def _lut(pairs: dict[bytes, int], dtype=np.uint8) -> np.ndarray:
    table = np.zeros(256, dtype)
    for chars, value in pairs.items():
        table[list(chars)] = value
    return table


_DEPTH_STEP = _lut({b"[{": 1, b"]}": -1}, np.int8)
_RUN_CHAR = _lut({b"[]0123456789.eE+-, \t\n\r": 1}).view(bool)
# Character classes inside a region: 0 whitespace, 1 '[', 2 ']', 3 ',', 4 '0', 5 '1'-'9',
# 6 '.', 7 'e'/'E', 8 '+', 9 '-'.  Classes >= 4 make up numbers.
_WS, _OPEN, _CLOSE, _COMMA, _ZERO, _DIGIT, _DOT, _EXP, _PLUS, _MINUS = range(10)
_CLASS = _lut({b"[": _OPEN, b"]": _CLOSE, b",": _COMMA, b"0": _ZERO, b"123456789": _DIGIT,
               b".": _DOT, b"eE": _EXP, b"+": _PLUS, b"-": _MINUS})
_SYMBOL = _lut({b"[": ord("["), b"]": ord("]"), b",": ord(","), b"0123456789.eE+-": ord("n")})
_TO_SPACE = bytes.maketrans(b"[],", b"   ")


def _pair_table() -> np.ndarray:
    """bad[prev * 16 + cur]: character pairs no JSON number allows (a separator is any of
    classes 0-3).  Counting rules (one '.', one exponent, no leading zero) are checked
    apart."""
    seps, digits = (_WS, _OPEN, _CLOSE, _COMMA), (_ZERO, _DIGIT)
    bad = np.zeros(256, bool)
    for prev in range(10):
        for cur in range(10):
            if prev in seps:
                wrong = cur in (_DOT, _EXP, _PLUS)
            elif prev in digits:
                wrong = cur in (_PLUS, _MINUS)
            elif prev == _EXP:
                wrong = cur not in (*digits, _PLUS, _MINUS)
            else:                                   # '.', '+', '-' need a digit next
                wrong = cur not in digits
            bad[prev * 16 + cur] = wrong
    return bad


_PAIR_BAD = _pair_table()
# Stream symbols '[' ']' ',' 'n' as 0-3; the pairs a JSON array of numbers allows.
_STREAM_CLASS = _lut({b"[": 0, b"]": 1, b",": 2, b"n": 3})
_STREAM_OK = np.zeros(16, bool)
_STREAM_OK[[0 * 4 + 0, 0 * 4 + 3, 0 * 4 + 1, 3 * 4 + 2, 3 * 4 + 1, 2 * 4 + 0, 2 * 4 + 3,
            1 * 4 + 1, 1 * 4 + 2]] = True


def parse_body(raw: bytes, *, max_depth: int = 64, arrays: bool = True) -> Any:
    """``json.loads(raw)``, with numeric arrays of ``THRESHOLD`` bytes or more as numpy
    arrays (see the module docstring) unless ``arrays`` is False (for bodies read value by
    value, like tf.Example features); every refusal is a ``BodyError``."""
    raw = bytes(raw)
    if not raw:
        raise BodyError("JSON Parse error: The document is empty")
    encoding = json.detect_encoding(raw)
    if encoding != "utf-8":           # UTF-16/32 or a BOM: scan the UTF-8 equivalent
        try:
            raw = raw.decode(encoding, "surrogatepass").encode("utf-8", "surrogatepass")
        except UnicodeError as exc:
            raise BodyError(f"JSON Parse error: Invalid encoding ({exc.reason}) "
                            f"at offset: {exc.start}") from None
    if not raw.strip(_JSON_WS):
        raise BodyError(f"JSON Parse error: The document is empty. at offset: {len(raw)}")
    scan = _scan(raw, max_depth, runs=arrays and len(raw) >= THRESHOLD)
    regions = [group for lo, hi in scan.runs for group in _groups(raw, lo, hi)]
    arrays, pieces, shifts, at = [], [], [], 0
    nonce = secrets.token_hex(16)
    while nonce.encode() in raw:      # never in practice; keeps placeholders unique
        nonce = secrets.token_hex(16)
    skeleton_len = 0
    todo = regions[::-1]
    while todo:
        lo, hi = todo.pop()
        try:
            array = _parse_region(raw, lo, hi)
        except _Mixed:                # like [1, [2, 3]]: json gets it, its parts maybe not
            todo += _groups(raw, lo + 1, hi - 1)[::-1]
            continue
        if array is None:             # a syntax error or huge integers: json decides
            continue
        placeholder = b'"%s%d"' % (nonce.encode(), len(arrays))
        pieces += [raw[at:lo], placeholder]
        skeleton_len += lo - at + len(placeholder)
        shifts.append((skeleton_len, hi - lo - len(placeholder)))
        arrays.append(array)
        at = hi
    skeleton = raw if not arrays else b"".join([*pieces, raw[at:]])
    del pieces
    if arrays:                        # what json.loads will see: the body less its arrays
        scan = _scan(skeleton, max_depth, runs=False)
    _check_cost(scan, len(raw))
    value = _loads(skeleton, shifts)
    return _fill(value, arrays, nonce) if arrays else value


def _loads(skeleton: bytes, shifts: list[tuple[int, int]]) -> Any:
    """json.loads with its errors as BodyErrors at byte offsets of the original body."""

    def offset(at: int) -> int:
        return at + sum(shift for end, shift in shifts if end <= at)

    try:
        return json.loads(skeleton)
    except json.JSONDecodeError as exc:
        at = len(exc.doc[:exc.pos].encode("utf-8", "surrogatepass"))
        reason = exc.msg.removesuffix(" at")      # "Unterminated string starting at"
        raise BodyError(f"JSON Parse error: {reason} at offset: {offset(at)}") from None
    except UnicodeDecodeError as exc:
        raise BodyError(f"JSON Parse error: Invalid encoding in string ({exc.reason}) "
                        f"at offset: {offset(exc.start)}") from None
    except RecursionError:            # the depth scan should have caught it
        raise BodyError("JSON nesting too deep") from None


def _fill(value: Any, arrays: list[np.ndarray], nonce: str) -> Any:
    """Put the arrays in place of their placeholders (depth is bounded by max_depth)."""
    if isinstance(value, str):
        return arrays[int(value[len(nonce):])] if value.startswith(nonce) else value
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, str | list | dict):
                value[key] = _fill(item, arrays, nonce)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, str | list | dict):
                value[i] = _fill(item, arrays, nonce)
    return value


# -- structure ---------------------------------------------------------------------------
@dataclass
class _Scan:
    """What one pass over a body found, outside strings unless said: the counts the cost
    estimate needs, and the runs of numeric characters of THRESHOLD bytes or more."""

    objects: int = 0
    lists: int = 0
    commas: int = 0
    colons: int = 0
    numbers: int = 0
    strings: int = 0
    string_bytes: int = 0             # inside strings, escapes as written
    width: int = 1                    # bytes per character of the text json.loads decodes
    runs: list[tuple[int, int]] = field(default_factory=list)


def _scan(raw: bytes, max_depth: int, runs: bool) -> _Scan:
    """One vectorised pass, a _SCAN_CHUNK at a time (temporaries of a few times _CHUNK, never
    of the body's size, and no Python object per token): which bytes are inside strings
    (a quote after an even run of backslashes opens or closes one), the nesting depth
    (refused past ``max_depth`` before any recursive parser sees it), the counts of
    ``_Scan`` and, when ``runs``, the numeric runs outside strings."""
    view = np.frombuffer(raw, np.uint8)
    found = _Scan()
    in_string, backslashes, depth, run_start = False, 0, 0, -1
    top = 0
    for at in range(0, len(raw), _SCAN_CHUNK):
        chunk = view[at:at + _SCAN_CHUNK]
        n = chunk.size
        index = np.arange(n, dtype=np.int32)
        # the run of backslashes just before each byte (carried over from the last chunk)
        last = np.where(chunk == 92, -1, index)
        np.maximum.accumulate(last, out=last)
        before = np.empty(n, np.int32)
        before[0] = backslashes
        before[1:] = index[:-1] - last[:-1] + np.where(last[:-1] < 0, backslashes, 0)
        quote = (chunk == 34) & ((before & 1) == 0)
        backslashes = n - 1 - int(last[-1]) + (backslashes if last[-1] < 0 else 0)
        del last, before, index
        inside = (np.cumsum(quote, dtype=np.int32) & 1).astype(bool)
        if in_string:
            np.logical_not(inside, out=inside)
        in_string = bool(inside[-1])  # an opening quote is inside, a closing one outside
        opening = quote & inside
        found.strings += int(np.count_nonzero(opening))
        found.string_bytes += int(np.count_nonzero(inside)) - int(np.count_nonzero(opening))
        del quote, opening
        outside = ~inside
        del inside
        counts = np.bincount(chunk[outside], minlength=256)
        found.objects += int(counts[ord("{")])
        found.lists += int(counts[ord("[")])
        found.commas += int(counts[ord(",")])
        found.colons += int(counts[ord(":")])
        top = max(top, int(chunk.max()))
        cls = _CLASS[chunk]
        starts = ((cls == _DIGIT) | (cls == _ZERO) | (cls == _MINUS)) & outside
        starts[1:] &= cls[:-1] < _ZERO                      # not a number's later digit
        found.numbers += int(np.count_nonzero(starts))
        del starts
        steps = _DEPTH_STEP[chunk]
        steps[~outside] = 0
        if steps.any():
            level = np.cumsum(steps, dtype=np.int32) + depth
            if level.max() > max_depth:
                raise BodyError(f"JSON nesting deeper than {max_depth} levels")
            depth = int(level[-1])
        if runs:                      # numeric characters, outside strings
            numeric = (_RUN_CHAR[chunk] & outside).view(np.int8)
            edges = np.flatnonzero(np.diff(numeric, prepend=np.int8(0), append=np.int8(0)))
            ends = edges[1::2]
            keep = (ends - edges[::2] >= THRESHOLD) | (edges[::2] == 0) | (ends == n)
            spans = list(zip(edges[::2][keep].tolist(), ends[keep].tolist(), strict=True))
            del edges, ends, keep
            if run_start >= 0:        # a run that began in an earlier chunk
                if spans and spans[0][0] == 0:
                    spans[0] = (run_start - at, spans[0][1])
                else:
                    spans.insert(0, (run_start - at, 0))
                run_start = -1
            if spans and spans[-1][1] == n and at + n < len(raw):
                run_start = at + spans.pop()[0]     # goes on in the next chunk
            found.runs += [(at + lo, at + hi) for lo, hi in spans if hi - lo >= THRESHOLD]
    found.width = 4 if top >= 0xF0 else 2 if top >= 0xC4 else 1
    return found


#: What the value json.loads builds costs, per token (CPython, 64-bit): a list slot for
#: every value, a list, a small dict (keys are shared: json memoises them; a dict entry
#: beyond the first few), a str's header, a float.
_SLOT, _LIST, _DICT, _ENTRY, _STR, _FLOAT = 8, 56, 184, 40, 49, 24


def _check_cost(scan: _Scan, size: int) -> None:
    """Refuse a body whose parsed value would take more than ``COST_RATIO`` x its size
    (plus ``COST_SLACK``), before json.loads builds any of it: tiny objects, strings and
    numbers (``[{}, {}, ...]``, ``["ab", "ab", ...]``) cost 20-40x their text as Python
    objects.  Numbers in big arrays are not counted: they become numpy arrays (~1x)."""
    values = scan.commas + scan.lists + scan.objects
    cost = (values * _SLOT + scan.lists * _LIST + scan.objects * _DICT
            + scan.colons * _ENTRY + (scan.strings - scan.colons) * _STR
            + scan.string_bytes * scan.width + scan.numbers * (_FLOAT + _SLOT))
    if cost > COST_RATIO * size + COST_SLACK:
        raise BodyError(
            f"JSON body too costly to parse: its {values} values would take about "
            f"{cost >> 20} MB in memory for a {size / (1 << 20):.1f} MB body (at most "
            f"{COST_RATIO:g}x its size plus {COST_SLACK >> 20} MB); send numbers as arrays "
            "and binary data as fewer, larger b64 values")


def _groups(raw: bytes, lo: int, hi: int) -> list[tuple[int, int]]:
    """The top-level balanced bracket groups of THRESHOLD bytes or more in raw[lo:hi], a
    run with no string or brace in it (so every bracket in it counts).

    An open bracket at depth m (before it) starts a top-level group when the depth comes
    back to m later in the run (its close is in the run) and no enclosing open of the run
    is closed in the run: the suffix minimum of the depth is m, or no open of the run
    encloses it (the prefix minimum is m)."""
    if _one_group(raw, lo, hi):
        first = raw.index(b"[", lo, hi)
        last = raw.rindex(b"]", lo, hi) + 1
        return [(first, last)] if last - first >= THRESHOLD else []
    step = _DEPTH_STEP[np.frombuffer(raw, np.uint8, hi - lo, lo)]
    offsets = np.flatnonzero(step)
    if not offsets.size:
        return []
    steps = step[offsets]
    offsets += lo
    del step
    depth = np.cumsum(steps, dtype=np.int32)
    opens = steps > 0
    level = depth - 1
    suffix_min = np.minimum.accumulate(depth[::-1])[::-1]
    prefix_min = np.minimum.accumulate(np.concatenate(([0], depth[:-1])))
    prefix_min = np.minimum(prefix_min, 0)
    top = opens & ((suffix_min == level) | ((prefix_min == level) & (suffix_min <= level)))
    groups = []
    for m in np.unique(level[top]):
        firsts = np.flatnonzero(top & (level == m))
        closes = np.flatnonzero(~opens & (depth == m))
        lasts = closes[np.searchsorted(closes, firsts)]
        groups += zip(offsets[firsts].tolist(), (offsets[lasts] + 1).tolist(), strict=True)
    return sorted((a, b) for a, b in groups if b - a >= THRESHOLD)


def _one_group(raw: bytes, lo: int, hi: int) -> bool:
    """Whether the brackets of raw[lo:hi] make one balanced group (the usual case: one
    array), checked a chunk at a time with no offsets kept."""
    view = np.frombuffer(raw, np.uint8)
    depth, first, closed = 0, True, False
    for at in range(lo, hi, _CHUNK):
        steps = _DEPTH_STEP[view[at:min(at + _CHUNK, hi)]]
        steps = steps[steps != 0]
        if not steps.size:
            continue
        if closed or (first and steps[0] < 0):
            return False          # something after the group closed, or a close first
        first = False
        level = np.cumsum(steps, dtype=np.int32) + depth
        zeros = np.flatnonzero(level <= 0)
        if zeros.size and (zeros[0] != level.size - 1 or level[-1] < 0):
            return False
        closed, depth = bool(zeros.size), int(level[-1])
    return closed and not first


# -- numeric regions ---------------------------------------------------------------------
def _chunks(raw: bytes, lo: int, hi: int) -> list[tuple[int, int]]:
    """raw[lo:hi] cut into pieces of about _CHUNK bytes, each ending on a separator, so
    that no number straddles two pieces."""
    cuts, at = [], lo
    while at < hi:
        end = min(at + _CHUNK, hi)
        if end < hi:
            sep = _SEPARATOR.search(raw, end, hi)
            end = sep.end() if sep else hi
        cuts.append((at, end))
        at = end
    return cuts


def _parse_region(raw: bytes, lo: int, hi: int) -> np.ndarray | None:
    """The array of the balanced numeric region raw[lo:hi]; None when json should judge
    it (a syntax error, or an integer int64 might not hold); BodyError when ragged (numbers
    all at one depth, lists of unequal length); _Mixed when numbers and lists mix."""
    view = np.frombuffer(raw, np.uint8)
    cuts = _chunks(raw, lo, hi)
    stream, counts, is_float = [], [], False
    for a, b in cuts:
        chunk = view[a:b]
        cls = _CLASS[chunk]
        prev = np.empty_like(cls)
        prev[0], prev[1:] = _WS, cls[:-1]
        nxt = np.empty_like(cls)
        nxt[-1], nxt[:-1] = _WS, cls[1:]
        if _PAIR_BAD[prev * 16 + cls].any() or _PAIR_BAD[cls[-1] * 16 + _WS]:
            return None
        num = cls >= _ZERO
        start = num & (prev < _ZERO)
        after_start = np.zeros_like(start)
        after_start[1:] = start[:-1]
        leading_zero = ((cls == _ZERO) & (start | ((prev == _MINUS) & after_start))
                        & ((nxt == _ZERO) | (nxt == _DIGIT)))
        if leading_zero.any():
            return None
        token_starts = np.flatnonzero(start)
        marks = np.flatnonzero((cls == _DOT) | (cls == _EXP))
        token_of_mark = np.searchsorted(token_starts, marks, "right") - 1
        if marks.size > 1:            # one '.' then one exponent, at most, per number
            kinds = cls[marks]
            same = token_of_mark[1:] == token_of_mark[:-1]
            if (same & ((kinds[1:] == _DOT) | (kinds[:-1] == _EXP))).any():
                return None
        is_float |= bool(marks.size)
        token_ends = np.flatnonzero(num & (nxt < _ZERO))
        long = token_ends - token_starts >= 18
        if long.any():
            long[token_of_mark] = False
            if long.any():            # an integer of 19+ digits: json keeps it exact
                return None
        counts.append(token_starts.size)
        stream.append(_SYMBOL[chunk][(cls == _OPEN) | (cls == _CLOSE) | (cls == _COMMA)
                                     | start].tobytes())
    tokens = b"".join(stream)
    del stream
    token_view = np.frombuffer(tokens, np.uint8)
    for at in range(0, len(tokens), _CHUNK):  # a chunk at a time: small temporaries
        symbols = _STREAM_CLASS[token_view[at:at + _CHUNK + 1]]
        if not _STREAM_OK[symbols[:-1] * 4 + symbols[1:]].all():
            return None
    shape = _shape(tokens)
    if shape is None or not _matches(memoryview(tokens), shape):
        symbols = _STREAM_CLASS[token_view]
        depth = np.cumsum(np.choose(symbols, [1, -1, 0, 0]).astype(np.int8), dtype=np.int64)
        if np.unique(depth[symbols == 3]).size > 1:
            raise _Mixed
        raise BodyError(f"JSON array at offset {lo}: lists of unequal length "
                        "(ragged tensor)")
    del symbols, token_view
    dtype = np.float64 if is_float else np.int64
    out = np.empty(sum(counts), dtype)
    filled = 0
    for (a, b), count in zip(cuts, counts, strict=True):
        if count:                     # (np.fromstring reads blank text as [0])
            values = np.fromstring(raw[a:b].translate(_TO_SPACE), dtype, sep=" ")
            if values.size != count:  # cannot happen after the checks above
                return None
            out[filled:filled + count] = values
            filled += count
    return out.reshape(shape)


def _shape(tokens: bytes) -> tuple[int, ...] | None:
    """The shape a rectangular token stream ('[', ']', ',', 'n') would have, read off
    its first list at each level; None when that cannot be."""
    rank = _LEADING_OPENS.match(tokens).end()
    dims, inner = [], 1               # inner: length of one element of the level below
    for level in range(rank, 0, -1):
        closes = rank - level + 1
        at = tokens.find(b"]" * closes, level - 1)
        if at < 0:
            return None
        length = at + closes - 1 - (level - 1) + 1
        if length == 2:
            dims.append(0)
        elif (length - 1) % (inner + 1):
            return None
        else:
            dims.append((length - 1) // (inner + 1))
        inner = length
    return tuple(reversed(dims))


def _canon_len(shape: tuple[int, ...]) -> int:
    if not shape:
        return 1
    if shape[0] == 0:
        return 2
    return 2 + shape[0] * _canon_len(shape[1:]) + shape[0] - 1


def _canon(shape: tuple[int, ...]) -> bytes:
    if not shape:
        return b"n"
    if shape[0] == 0:
        return b"[]"
    return b"[" + b",".join([_canon(shape[1:])] * shape[0]) + b"]"


def _matches(view: memoryview, shape: tuple[int, ...]) -> bool:
    """Whether ``view`` is exactly the token stream of an array of ``shape``, compared a
    block at a time (no full copy of the expected stream is built)."""
    if len(view) != _canon_len(shape):
        return False
    if not shape or shape[0] == 0:
        return view == _canon(shape)
    if view[:1] != b"[" or view[-1:] != b"]":
        return False
    child = _canon_len(shape[1:])
    if child > _CHUNK:                # big children: each on its own
        return all((i == 0 or view[i * (child + 1):i * (child + 1) + 1] == b",")
                   and _matches(view[1 + i * (child + 1):1 + i * (child + 1) + child],
                                shape[1:])
                   for i in range(shape[0]))
    unit = b"," + _canon(shape[1:])
    block = unit * max(1, _CHUNK // len(unit))
    body = b"," + bytes(view[1:1 + child])      # the first child, with a comma in front
    if body != unit:
        return False
    rest = view[1 + child:-1]
    for at in range(0, len(rest), len(block)):
        piece = rest[at:at + len(block)]
        if piece != block[:len(piece)]:
            return False
    return True
