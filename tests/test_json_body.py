"""tfdeploy.tfs.json_body: json.loads results with big numeric arrays as numpy arrays."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
import pytest

from tfdeploy.tfs import json_tensors, protos
from tfdeploy.tfs.codes import StatusError
from tfdeploy.tfs.json_body import THRESHOLD, BodyError, parse_body


def as_lists(value):
    """parse_body's result with every array back as nested lists, as json.loads has it."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {k: as_lists(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_lists(v) for v in value]
    return value


def same(a, b, loose: bool = False) -> bool:
    """Equality that counts NaN equal to NaN (json.loads gives NaN for NaN); ``loose``
    compares numbers as float64, as an int in a float array is (module docstring)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y, loose) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k], loose) for k in a)
    numbers = type(a) in (int, float) and type(b) in (int, float)
    if numbers and loose:
        return float(a) == float(b)
    return numbers and a == b or (type(a) is type(b) and a == b)


def dumps(value, rng: random.Random) -> str:
    """JSON text of ``value`` with random whitespace (spaces, tabs, newlines) between
    tokens, which json.dumps never writes."""
    def ws() -> str:
        return rng.choice(["", "", " ", "\n", "\t ", "\r\n  "])
    if isinstance(value, list):
        return "[" + ws() + ("," + ws()).join(dumps(v, rng) + ws() for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ws() + ",".join(f"{json.dumps(k)}{ws()}:{ws()}{dumps(v, rng)}{ws()}"
                                     for k, v in value.items()) + "}"
    return json.dumps(value)


def number(rng: random.Random, floats: bool):
    kind = rng.randrange(6)
    if not floats:
        return rng.randint(-10**rng.randint(0, 17), 10**rng.randint(0, 17))
    if kind == 0:   # an int in a float array is a float64, exact below 2**53
        return rng.randint(-2**53, 2**53)
    if kind == 1:
        return rng.choice([0.0, -0.0, 1e-320, 1.5e300, -2.5e-8, 1e22])
    return rng.uniform(-1, 1) * 10 ** rng.randint(-30, 30)


def tensor(rng: random.Random, big: bool):
    shape = [rng.randint(0 if not big else 1, 4) for _ in range(rng.randint(1, 3))]
    if big:
        shape[0] = THRESHOLD // 4 // max(1, math.prod(shape[1:])) + rng.randint(1, 50)
    floats = rng.random() < 0.6
    flat = [number(rng, floats) for _ in range(math.prod(shape))]
    return np.array(flat, dtype=object).reshape(shape).tolist() if flat else (
        np.zeros(shape).tolist())


def scalar(rng: random.Random):
    return rng.choice(["[1,2]", "x [[3, 4]] \"q\" \\ ]", "\u00e9\u4e2d\U0001f600", "",
                       {"b64": "AAEC"}, None, True, False, 1, -2.5e-3, float("nan"),
                       float("inf"), -float("inf"), "1e5", "-0"])


def document(rng: random.Random):
    kind = rng.randrange(4)
    if kind == 0:
        return {"instances": tensor(rng, big=True)}
    if kind == 1:
        return {"signature_name": "serving_default",
                "inputs": {"a": tensor(rng, True), "b": scalar(rng), "c": tensor(rng, False)}}
    if kind == 2:
        return {"instances": [{"image": tensor(rng, rng.random() < 0.5), "key": scalar(rng),
                               "nested": {"deep": [tensor(rng, False), scalar(rng)]}}
                              for _ in range(rng.randint(1, 3))]}
    return [tensor(rng, True), scalar(rng), [scalar(rng), tensor(rng, True)], {"s": "["}]


@pytest.mark.parametrize("seed", range(40))
def test_same_as_json_loads(seed):
    rng = random.Random(seed)
    doc = document(rng)
    raw = (dumps(doc, rng) if seed % 2 else json.dumps(doc)).encode()
    got = parse_body(raw)
    assert same(as_lists(got), json.loads(raw))


def test_big_arrays_become_numpy_arrays_small_ones_stay_lists():
    floats = np.arange(6000, dtype=np.float64).reshape(2000, 3) / 7
    raw = json.dumps({"inputs": {"x": floats.tolist(), "n": list(range(2000)),
                                 "small": [1, 2], "s": "[1, 2, 3]" * 2000}}).encode()
    got = parse_body(raw)["inputs"]
    assert got["x"].dtype == np.float64 and got["x"].shape == (2000, 3)
    np.testing.assert_array_equal(got["x"], floats)
    assert got["n"].dtype == np.int64 and got["n"].tolist() == list(range(2000))
    assert got["small"] == [1, 2] and got["s"] == "[1, 2, 3]" * 2000
    # read value by value (tf.Example features): plain lists, as json.loads gives them
    assert parse_body(raw, arrays=False) == json.loads(raw)


def test_edge_arrays():
    empties = "[" + ",".join(["[]"] * 3000) + "]"
    assert parse_body(empties.encode()).shape == (3000, 0)
    mixed = "[" + ",".join(["1", "2.5", "-3E2", "4e-1", "-0"] * 900) + "]"
    got = parse_body(mixed.encode())
    assert got.dtype == np.float64 and got.tolist() == json.loads(mixed)
    huge = "[" + ",".join(["123456789012345678901"] * 400) + "]"   # beyond int64
    assert parse_body(huge.encode()) == json.loads(huge)             # left to json, exact


@pytest.mark.parametrize("body", [
    "[" + ",".join([f"[{i}, {i}]" for i in range(2000)]) + ", [1]]",
    "[" + ",".join(["[[1], [2]]"] * 2000) + ", [[1]]]",
])
def test_ragged_big_arrays_are_refused(body):
    with pytest.raises(BodyError, match=r"lists of unequal length \(ragged tensor\)"):
        parse_body(body.encode())


def test_mixed_numbers_and_lists_stay_a_list_with_array_parts():
    big = np.arange(3000).reshape(1000, 3)
    raw = json.dumps([1, big.tolist(), [[2], [big.tolist()]]]).encode()
    got = parse_body(raw)
    assert isinstance(got, list) and isinstance(got[1], np.ndarray)
    assert isinstance(got[2][1][0], np.ndarray) and got[2][0] == [2]
    assert as_lists(got) == json.loads(raw)


def mutations(raw: bytes, rng: random.Random, n: int):
    for _ in range(n):
        at = rng.randrange(len(raw))
        how = rng.randrange(3)
        if how == 0:
            yield raw[:at] + raw[at + 1:]
        elif how == 1:
            yield raw[:at] + rng.choice([b",", b"]", b"[", b"x", b"0", b".", b"-", b" 1",
                                         b"e", b'"']) + raw[at:]
        else:
            yield raw[:at]


@pytest.mark.parametrize("seed", range(6))
def test_invalid_json_is_reported_like_json_loads(seed):
    rng = random.Random(seed)
    raw = dumps(document(rng), rng).encode()
    for bad in mutations(raw, rng, 60):
        try:
            expected = json.loads(bad)
        except json.JSONDecodeError as exc:
            with pytest.raises(BodyError) as caught:
                parse_body(bad)
            message = str(caught.value)
            if "ragged" not in message:
                reason = exc.msg.removesuffix(" at")
                assert message == f"JSON Parse error: {reason} at offset: {exc.pos}"
        else:
            try:
                assert same(as_lists(parse_body(bad)), expected, loose=True)
            except BodyError as exc:
                assert "ragged" in str(exc)


@pytest.mark.parametrize("body, message", [
    (b"", "JSON Parse error: The document is empty"),
    (b" \n\t", "JSON Parse error: The document is empty. at offset: 3"),
    (b"[1, 2", "JSON Parse error: Expecting ',' delimiter at offset: 5"),
    (b'{"a": 1,}', "JSON Parse error: Expecting property name enclosed in double quotes "
                   "at offset: 8"),
    (b"\xff[]", "JSON Parse error: Invalid encoding in string"),
    (b'["ab', "JSON Parse error: Unterminated string starting at offset: 1"),
])
def test_error_messages(body, message):
    with pytest.raises(BodyError, match="^" + message.replace("(", r"\(").replace(
            ")", r"\)").replace("[", r"\[")):
        parse_body(body)


def test_error_offsets_count_the_replaced_arrays():
    raw = b'{"a": [' + b"1.5, " * 2000 + b'2], "b": tru}'
    with pytest.raises(BodyError, match=f"at offset: {raw.index(b'tru')}$"):
        parse_body(raw)


@pytest.mark.parametrize("depth", [65, 1000, 100_000])
def test_deep_nesting_is_refused_without_recursion(depth):
    for raw in (b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth,
                b"[" * depth):
        with pytest.raises(BodyError, match="^JSON nesting deeper than 64 levels$"):
            parse_body(raw)


def test_brackets_in_strings_do_not_count_as_nesting():
    raw = json.dumps({"s": "[[[[" * 100, "t": 'a\\"[[[[' * 100, "n": [[1]]}).encode()
    assert parse_body(raw, max_depth=3) == json.loads(raw)
    with pytest.raises(BodyError, match="deeper than 2 levels"):
        parse_body(raw, max_depth=2)


def signature(**dtypes):
    meta = protos.module("tensorflow.core.protobuf.meta_graph_pb2")
    sd = meta.SignatureDef(method_name="tensorflow/serving/predict")
    for name, dtype in dtypes.items():
        sd.inputs[name].name = f"{name}:0"
        sd.inputs[name].dtype = protos.dtype_enum(dtype)
    return sd


@pytest.mark.parametrize("body, dtypes", [
    ({"instances": np.random.default_rng(0).random((40, 10, 3)).tolist()},
     {"image": "float"}),
    ({"instances": [{"a": np.arange(3000).reshape(1000, 3).tolist(), "b": [1.5, 2]},
                    {"a": np.arange(3000).reshape(1000, 3).tolist(), "b": [3, 4]}]},
     {"a": "int32", "b": "double"}),
    ({"inputs": {"a": (np.arange(4000) / 3).tolist(), "b": [[1, 2]]}},
     {"a": "float", "b": "int64"}),
    ({"inputs": np.arange(5000).tolist()}, {"x": "uint8"}),   # out of range for uint8
    ({"inputs": np.arange(5000).tolist()}, {"x": "string"}),  # numbers for a string
])
def test_parse_predict_gives_the_same_arrays(body, dtypes):
    raw = json.dumps(body).encode()
    sd = signature(**dtypes)
    try:
        expected = json_tensors.parse_predict(json.loads(raw), sd)
    except StatusError as exc:
        with pytest.raises(StatusError) as caught:
            json_tensors.parse_predict(parse_body(raw), sd)
        assert str(caught.value) == str(exc)
        return
    got = json_tensors.parse_predict(parse_body(raw), sd)
    assert got[1] == expected[1] and got[0].keys() == expected[0].keys()
    for name, array in expected[0].items():
        assert got[0][name].dtype == array.dtype
        np.testing.assert_array_equal(got[0][name], array)


def numeric_body(path, rows: int) -> int:
    """Write {"instances": <rows x 3 floats>} to ``path`` a slice at a time (building it
    in one go would raise the parent's peak, not the child's); returns its size."""
    rng = np.random.default_rng(0)
    with open(path, "wb") as out:
        out.write(b'{"instances": [')
        for at in range(0, rows, 100_000):
            part = rng.random((min(100_000, rows - at), 3)).tolist()
            text = json.dumps(part)[1:-1]
            out.write((", " if at else "").encode() + text.encode())
        out.write(b"]}")
        return out.tell()


def test_memory_stays_near_the_body_size(tmp_path):
    """A ~50 MB float body: parse_body's peak RSS growth stays under 4x the body (json.loads
    needs about 20x); measured with ru_maxrss in a fresh interpreter that only read it."""
    size = numeric_body(tmp_path / "body.json", 900_000)
    script = textwrap.dedent("""
        import resource, sys
        from tfdeploy.tfs.json_body import parse_body
        raw = open(sys.argv[1], "rb").read()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        value = parse_body(raw)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((after - before) * 1024, *value["instances"].shape)
    """)
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "body.json")],
                         capture_output=True, text=True, check=True).stdout.split()
    growth, shape = int(out[0]), tuple(map(int, out[1:]))
    assert shape == (900_000, 3) and size > 45e6
    assert growth < 4 * size, (size, growth)


#: Bodies of ~8 MB (twice COST_SLACK) made of one repeated item: (item, refused?).
COSTLY = {
    "empty objects": (b"{}", True),
    "short strings": (b'"ab"', True),
    "tiny b64": (b'{"b64": "AA=="}', True),
    "rows": (b'{"x": 1.5}', True),
    "nested": (b'[[[["a"]]]]', True),
    "short numbers in objects": (b'{"x": [1.5, 2]}', True),
    "b64 images": (b'{"b64": "' + b"QUJD" * 1024 + b'"}', False),
    "long strings": (b'"' + b"x" * 200 + b'"', False),
    "braces in strings": (b'"' + b'{}, [1], \\"{' * 20 + b'\\\\"', False),
    "empty lists": (b"[]", False),
    "numbers": (b"[0.25, 1.5, 3.125]", False),
}


@pytest.mark.parametrize("kind", COSTLY)
def test_no_body_costs_more_than_twice_its_size(kind):
    """Tiny values cost 15-40x their text as Python objects: such a body is refused from
    one scan, before any of it is built; the others parse within ~2x."""
    item, refused = COSTLY[kind]
    raw = b'{"instances": [' + b", ".join([item] * (8_000_000 // (len(item) + 2))) + b"]}"
    tracemalloc.start()
    try:
        value = parse_body(raw)
        outcome = "parsed"
    except BodyError as exc:
        value, outcome = None, str(exc)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    if refused:
        assert outcome.startswith("JSON body too costly to parse: "), outcome
        assert peak < 16 << 20, peak  # the scan's temporaries: a constant, not the body's
    else:
        assert outcome == "parsed" and len(value["instances"]) > 1000
        assert same(as_lists(value), json.loads(raw))
    assert peak < 2 * len(raw) + (4 << 20), (peak, len(raw))

