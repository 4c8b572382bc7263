"""The text of REST status and metadata answers (tfs/proto_json.py), held to protobuf's
C++ JSON printer itself: tests/cpp/proto_json.cc, built here against the libprotobuf
Debian ships (3.21), prints the same messages with the options TF Serving passes.

3.21 is the printer TF Serving used up to its move to protobuf 26 (whose printer it calls
now, with ``always_print_fields_with_no_presence``).  Both lay the text out alike and
escape alike; they differ in one place: 3.21 writes a oneof member (a TensorInfo's
``name``, a model spec's ``version``) after the message's other fields, 26 and later in
field-number order with the rest, as ``proto_json`` does.  Where a oneof member is set,
the comparison is of lines, not their order."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT

from tfdeploy.tfs import json_tensors, proto_json, protos, requests

status_pb2 = protos.module("tensorflow_serving.apis.get_model_status_pb2")
metadata_pb2 = protos.module("tensorflow_serving.apis.get_model_metadata_pb2")
model_pb2 = protos.module("tensorflow_serving.apis.model_pb2")


@pytest.fixture(scope="module")
def cpp_printer(tmp_path_factory) -> Path:
    """The C++ printer, compiled; skipped (saying why) without g++ or libprotobuf-dev,
    which `make test` installs where apt-get can."""
    if shutil.which("g++") is None or not Path(
            "/usr/include/google/protobuf/util/json_util.h").exists():
        pytest.skip("needs g++ and libprotobuf-dev (apt-get install g++ libprotobuf-dev)")
    binary = tmp_path_factory.mktemp("cpp") / "proto_json"
    subprocess.run(["g++", "-O1", "-o", str(binary), str(ROOT / "tests/cpp/proto_json.cc"),
                    "-lprotobuf"], check=True, capture_output=True, timeout=300)
    return binary


def _descriptor_set(message) -> bytes:
    """The FileDescriptorSet of ``message``'s file and everything it imports."""
    from google.protobuf import descriptor_pb2

    files, seen = descriptor_pb2.FileDescriptorSet(), set()

    def add(file) -> None:
        if file.name in seen:
            return
        seen.add(file.name)
        for dependency in file.dependencies:
            add(dependency)
        file.CopyToProto(files.file.add())

    add(message.DESCRIPTOR.file)
    return files.SerializeToString()


def cpp_text(printer: Path, message, proto_names: bool, tmp_path: Path) -> str:
    descriptors = tmp_path / "descriptors.bin"
    descriptors.write_bytes(_descriptor_set(message))
    done = subprocess.run([str(printer), str(descriptors), message.DESCRIPTOR.full_name,
                           "1" if proto_names else "0"], input=message.SerializeToString(),
                          capture_output=True, check=True, timeout=60)
    return done.stdout.decode("utf-8")


def _status(*versions: tuple[int, int, int, str]):
    response = status_pb2.GetModelStatusResponse()
    for version, state, code, message in versions:
        entry = response.model_version_status.add(version=version, state=state)
        entry.status.SetInParent()
        entry.status.error_code, entry.status.error_message = code, message
    return response


STATUSES = {
    "none": _status(),
    "one": _status((1, 30, 0, "")),
    "failed beside serving": _status(
        (1, 30, 0, ""), (2, 40, 3, 'Failed to load "x": <bad> \\ tab\there'),
        (9223372036854775807, 10, 13,
         "line\nbreak \x01 \x7f \u2028 \ufeff é 😀 \u00ad \U0001d173")),
}


@pytest.mark.parametrize("name", STATUSES)
def test_status_text_is_the_cpp_printers(cpp_printer, tmp_path, name):
    message = STATUSES[name]
    assert proto_json.message_text(message) == cpp_text(cpp_printer, message, False, tmp_path)


def test_status_text_is_what_tf_servings_rest_guide_shows():
    assert proto_json.message_text(_status((123, 30, 0, ""))) == """{
 "model_version_status": [
  {
   "version": "123",
   "state": "AVAILABLE",
   "status": {
    "error_code": "OK",
    "error_message": ""
   }
  }
 ]
}
"""


def _signatures():
    sigs = metadata_pb2.SignatureDefMap()
    predict = sigs.signature_def["serving_default"]
    predict.method_name = "tensorflow/serving/predict"
    images = predict.inputs["images"]
    images.name, images.dtype = "ImageTensor:0", 4  # DT_UINT8
    for size in (-1, -1, -1, 3):
        images.tensor_shape.dim.add(size=size)
    predict.outputs["mask_png"].name = "mask<png>:0"
    predict.outputs["mask_png"].dtype = 7  # DT_STRING
    predict.outputs["mask_png"].tensor_shape.unknown_rank = True
    named = sigs.signature_def["class_names"]
    named.method_name = "tensorflow/serving/predict"
    named.outputs["names"].name = "names:0"
    scale = named.defaults["scale"]  # floats, doubles, int64 and bytes values
    scale.dtype = 1
    scale.float_val.extend([0.1, 1.0, 1e20, 3.4028235e38, 1.5e-45, float("nan"), -float("inf")])
    scale.double_val.extend([0.1, 2.0 / 3.0, 1e-300])
    scale.int64_val.append(-(2 ** 63))
    scale.string_val.extend([b"\xff\x00", b"ab", b"abc"])
    scale.tensor_content = b"\x00\x01\x02\x03"
    return sigs


def _lines(text: str) -> list[str]:
    """Lines, a trailing comma aside (where a oneof member moves, so does the last)."""
    return sorted(line.rstrip(",") for line in text.splitlines())


def test_metadata_text_is_the_cpp_printers(cpp_printer, tmp_path):
    sigs = _signatures()
    ours, theirs = (proto_json.message_text(sigs, True),
                    cpp_text(cpp_printer, sigs, True, tmp_path))
    assert _lines(ours) == _lines(theirs)
    assert json.loads(ours) == json.loads(theirs)
    spec = model_pb2.ModelSpec(name="deeplab")
    spec.version.value = 2
    ours = proto_json.message_text(spec, True)
    assert _lines(ours) == _lines(cpp_text(cpp_printer, spec, True, tmp_path))
    # protobuf 26 and later: field-number order, the oneof member among the rest
    assert ours == '{\n "name": "deeplab",\n "version": "2",\n "signature_name": ""\n}\n'


def test_metadata_answer_is_joined_as_tensorflow_model_server_joins_it():
    spec = model_pb2.ModelSpec(name="deeplab")
    spec.version.value = 1
    sigs = _signatures()
    text = proto_json.metadata_text(spec, sigs)
    assert text.startswith('{\n"model_spec":{\n "name": "deeplab",\n')
    assert '\n}\n,\n"metadata": {"signature_def": {\n "signature_def": {\n' in text
    assert text.endswith("\n}\n}\n}\n")
    parsed = json.loads(text)
    assert parsed["model_spec"] == {"name": "deeplab", "version": "1", "signature_name": ""}
    meta_graph_pb2 = protos.module("tensorflow.core.protobuf.meta_graph_pb2")
    back = json_tensors.json_to_message(  # what our REST client reads (FLT_MAX aside:
        parsed["metadata"]["signature_def"]["signature_def"]["serving_default"],  # Python's
        meta_graph_pb2.SignatureDef())  # parser refuses the 9 digits of it the printer writes)
    assert back == sigs.signature_def["serving_default"]
    assert list(json.loads(proto_json.message_text(sigs, True))["signature_def"]) == [
        "class_names", "serving_default"]  # map entries sorted: the same text every time


def test_status_text_reads_back_into_the_message():
    """What our REST client does with a status answer."""
    message = STATUSES["failed beside serving"]
    back = json_tensors.json_to_message(json.loads(proto_json.message_text(message)),
                                        status_pb2.GetModelStatusResponse())
    assert back == message
    assert requests.version_states(back) == {
        1: "AVAILABLE", 2: "UNLOADING", 9223372036854775807: "START"}


def test_a_byte_that_was_not_utf8_is_a_space():
    """As the C++ printer writes a decoding failure (a model name from a URL may hold
    one, kept by surrogateescape)."""
    assert proto_json.quote("a\udcffb") == '"a b"'
