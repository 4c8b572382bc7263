"""tfs/json_text: the text of tensorflow_model_server's REST answers.  The layout is
checked against rapidjson itself (python-rapidjson wraps the C++ library TF Serving
writes with); the answers against the texts TF Serving's code writes for them."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import rapidjson

from tfdeploy.tfs import json_text
from tfdeploy.tfs.json_text import PrettyWriter


def _write(writer: PrettyWriter, value) -> None:
    """Drive ``writer`` over a Python value, event by event, as rapidjson's Writer does."""
    if isinstance(value, dict):
        writer.start_object()
        for key, item in value.items():
            writer.key(key)
            _write(writer, item)
        writer.end_object()
    elif isinstance(value, list):
        writer.start_array()
        for item in value:
            _write(writer, item)
        writer.end_array()
    elif isinstance(value, str):
        writer.raw(json_text.quote(value))
    elif isinstance(value, bool):
        writer.raw("true" if value else "false")
    else:
        writer.raw(str(value))


def _random_value(rng: random.Random, depth: int = 0):
    kind = rng.choice(["int", "str", "bool", "list", "dict"] if depth < 4 else ["int", "str"])
    if kind == "int":
        return rng.randint(-10**6, 10**6)
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "str":
        return "".join(rng.choice('ab "\\/\x00\x08\x0b\x1f\x7fé€\U0001f600\n\t')
                       for _ in range(rng.randint(0, 6)))
    if kind == "list":
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {f"k{i}\n": _random_value(rng, depth + 1) for i in range(rng.randint(0, 4))}


@pytest.mark.parametrize("single_line", [False, True])
def test_pretty_writer_writes_what_rapidjson_writes(single_line):
    rng = random.Random(7)
    mode = rapidjson.WM_SINGLE_LINE_ARRAY if single_line else rapidjson.WM_PRETTY
    for _ in range(500):
        value = _random_value(rng)
        writer = PrettyWriter()
        writer.single_line = single_line
        _write(writer, value)
        assert writer.text() == rapidjson.dumps(value, indent=4, ensure_ascii=False,
                                                write_mode=mode), value


@pytest.mark.parametrize("single_line", [False, True])
def test_arrays_laid_out_at_once_match_the_writer(single_line):
    """array_text (a whole tensor at once) gives what the event-by-event writer gives,
    at any depth, with {"b64"} objects inside."""
    rng = np.random.default_rng(3)
    for shape in [(), (0,), (3,), (2, 3), (2, 0, 2), (2, 2, 3)]:
        ints = rng.integers(-99, 99, shape)
        blobs = np.asarray(np.frompyfunc(lambda i: bytes([i % 256, 255]), 1, 1)(ints),
                           dtype=object)
        for depth in (0, 1, 3):
            for name, value in (("x", ints), ("x_bytes", blobs)):
                expected = PrettyWriter()
                expected.single_line = single_line
                for _ in range(depth):
                    expected.start_array()
                _write(expected, json.loads(json.dumps(_as_json(name, value))))
                got = PrettyWriter()
                got.single_line = single_line
                for _ in range(depth):
                    got.start_array()
                got.raw(json_text.array_text(json_text.value_texts(
                    name, value, depth + value.ndim), depth, single_line))
                assert got.text() == expected.text(), (shape, depth, name)


def _as_json(name: str, value: np.ndarray):
    from tfdeploy.tfs.json_tensors import to_json

    return to_json(name, value)


@pytest.mark.parametrize("value, text", [
    (0.1, "0.1"), (2.5, "2.5"), (3.0, "3.0"), (-0.0, "-0.0"), (1 / 3, "0.333333343"),
    (1e6, "1e+06"), (123456.0, "123456.0"), (1234567.0, "1234567.0"), (1e-5, "1e-05"),
    (3.4028235e38, "3.40282347e+38"), (float("nan"), "NaN"), (float("inf"), "Infinity"),
    (float("-inf"), "-Infinity"), (16777216.0, "16777216.0"), (0.0001, "0.0001"),
])
def test_float32_text_is_tf_servings(value, text):
    assert json_text.decimals(np.array([value], np.float32)).tolist() == [text]


def test_float64_text_reads_back_exactly():
    values = np.array([0.1, 1 / 3, 2.0, 1e300, 5e-324, -123.456], np.float64)
    texts = json_text.decimals(values).tolist()
    assert texts == ["0.1", "0.33333333333333331", "2.0", "1e+300",
                     "4.94066e-324", "-123.456"]
    assert np.array_equal(np.array([float(t) for t in texts]), values)


def test_predict_answers_are_laid_out_as_tf_serving_writes_them():
    # half_plus_two's famous answer, closing bracket on a line of its own
    assert json_text.predict_text({"y": np.array([2.5, 3.0, 4.5], np.float32)}, "row") == (
        '{\n    "predictions": [2.5, 3.0, 4.5\n    ]\n}')
    assert json_text.predict_text({"y": np.array([[1, 2], [3, 4]], np.int64)}, "row") == (
        '{\n    "predictions": [[1, 2], [3, 4]\n    ]\n}')
    assert json_text.predict_text({"y": np.array([3.5, 4.0], np.float32)}, "columnar") == (
        '{\n    "outputs": [\n        3.5,\n        4.0\n    ]\n}')
    two = {"a": np.array([[1, 2]], np.int32), "b_bytes": np.array([b"\x00"], object)}
    assert json_text.predict_text(two, "row") == (
        '{\n    "predictions": [\n        {\n            "a": [1, 2],\n'
        '            "b_bytes": {\n                "b64": "AA=="\n            }\n'
        '        }\n    ]\n}')
    assert json.loads(json_text.predict_text(two, "columnar")) == {
        "outputs": {"a": [[1, 2]], "b_bytes": [{"b64": "AA=="}]}}
    # a scalar output, as a session returns it (a numpy scalar, not an array)
    assert json_text.predict_text({"n": np.int64(3)}, "columnar") == '{\n    "outputs": 3\n}'
    assert json_text.predict_text({"x": np.float32(0.5), "s": np.bytes_(b"a")},
                                  "columnar") == (
        '{\n    "outputs": {\n        "x": 0.5,\n        "s": "a"\n    }\n}')
    with pytest.raises(Exception, match="first dimension"):
        json_text.predict_text({"a": np.zeros(2), "b": np.zeros(3)}, "row")


def test_the_rest_client_reads_the_row_answer_it_asks_for():
    """Encoded images go as a row-format request, so the answer is ``predictions`` (a
    mask's arrays on one line) and the client finds its PNG in the first row."""
    from tfdeploy.tfs import json_tensors

    body = json_tensors.encoded_image_body("serving_default", [b"\xff\xd8"])
    assert body == {"signature_name": "serving_default", "instances": [{"b64": "/9g="}]}
    outputs = {"segmentation_map": np.zeros((1, 2, 3), np.uint8),
               "mask_png": np.array([b"\x89PNG"], object)}
    answer = json.loads(json_text.predict_text(outputs, "row"))
    assert json_tensors.decode_bytes(json_tensors.first_row_value(answer, "mask_png")) == (
        b"\x89PNG")
    one = json.loads(json_text.predict_text({"mask_png": outputs["mask_png"]}, "row"))
    assert json_tensors.decode_bytes(json_tensors.first_row_value(one, "mask_png")) == (
        b"\x89PNG")


def test_classify_regress_and_error_answers():
    from tfdeploy.tfs import protos

    pb2 = protos.module("tensorflow_serving.apis.classification_pb2")
    result = pb2.ClassificationResult()
    c = result.classifications.add()
    c.classes.add(label="a", score=0.5)
    c.classes.add(label="b", score=0.1)
    result.classifications.add().classes.add(label="c", score=1.0)
    assert json_text.classification_text(result) == (
        '{\n    "results": [[["a", 0.5], ["b", 0.1]], [["c", 1.0]]\n    ]\n}')
    rpb2 = protos.module("tensorflow_serving.apis.regression_pb2")
    regressions = rpb2.RegressionResult()
    regressions.regressions.add(value=42.0)
    regressions.regressions.add(value=0.2)
    assert json_text.regression_text(regressions) == '{\n    "results": [42.0, 0.2]\n}'
    assert json_text.error_text('bad "x"\n') == '{\n    "error": "bad \\"x\\"\\n"\n}'
