"""``tfdeploy ui``'s view of a request log, in a real browser: a real tfdeploy-model-server
logs every request (``logging_config``, sampling_rate 1.0) of the demo images sent over
REST and of one pixel array over gRPC; the page lists them newest first with the mask of
the logged response, runs one again on the served version, and shows what a truncated or
corrupt log file still holds.  Logs are read back independently with TensorFlow's
TFRecordDataset.  Screenshots go under each test's temp dir."""

from __future__ import annotations

import base64
import io

import grpc
import numpy as np
import pytest
from PIL import Image
from servers import ServerProcess, http
from tensorflow_serving.apis import prediction_service_pb2_grpc
from test_request_log import _config, _logging, _wait_records
from ui_browser import open_page, pixels, shot, start_ui, stop

from tfdeploy.client.predict import Client
from tfdeploy.demo import demo_images
from tfdeploy.palette import voc_colormap
from tfdeploy.tfs import tensors


@pytest.fixture(scope="module")
def logged(demo_base, tmp_path_factory):
    """(server, log prefix, the records): the demo images through serving_default over
    REST, then one probe image as a uint8 array through predict_images over gRPC."""
    from tfdeploy.export.warmup import probe_image
    from tfdeploy.tfs.requests import images_request

    tmp = tmp_path_factory.mktemp("ui_log")
    prefix = tmp / "logs" / "deeplab"
    config = _config(tmp, demo_base, {"deeplab": _logging(1.0, prefix)})
    server = ServerProcess(f"--model_config_file={config}", log_dir=tmp)
    try:
        server.wait_available(model="deeplab")
        with Client(f"127.0.0.1:{server.rest_port}", "rest") as client:
            for image in demo_images():
                client.predict(image)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(server.grpc_target))
        stub.Predict(images_request("deeplab", probe_image(61, 83)), timeout=120)
        count = len(demo_images()) + 1
        records = _wait_records(prefix, count)
        assert len(records) == count
        yield server, prefix, records
    finally:
        server.stop()


def logged_mask(record) -> np.ndarray:
    """The mask the server answered, as the log holds it."""
    outputs = record.predict_log.response.outputs
    if "mask_png" in outputs:
        return np.asarray(Image.open(io.BytesIO(
            tensors.from_proto(outputs["mask_png"]).ravel()[0])))
    return tensors.from_proto(outputs["segmentation_map"])[0]


def logged_image(record) -> np.ndarray:
    inputs = record.predict_log.request.inputs
    if "image_bytes" in inputs:
        raw = tensors.from_proto(inputs["image_bytes"]).ravel()[0]
        return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))
    return tensors.from_proto(inputs["images"])[0].astype(np.uint8)


def open_requests(page, url: str, n: int) -> list:
    open_page(page, url)
    page.click("#views button[data-view=requests]")
    page.wait_for_function(
        "n => document.querySelectorAll('.request-entry:not(.pending)').length == n",
        arg=n)
    return page.query_selector_all("#requests .request-entry")


def test_logged_requests_show_the_logged_masks_and_run_again(page, logged, tmp_path):
    server, prefix, records = logged
    proc, url = start_ui("--server", f"127.0.0.1:{server.rest_port}", "--request-log",
                         str(prefix), "--classes", "demo")
    try:
        entries = open_requests(page, url, len(records))
        shot(page, tmp_path, "requests")
        colours = voc_colormap(256)
        # newest first: the pixel array sent last heads the list
        for entry, record in zip(entries, reversed(records), strict=True):
            spec = record.log_metadata.model_spec
            title = entry.query_selector("h2").inner_text()
            assert f"deeplab version {spec.version.value} · {spec.signature_name}" in title
            assert "latency not logged" in title  # a PredictionLog has no latency field
            expected = logged_mask(record)
            shown = pixels(page, entry.query_selector("img.request-mask"))
            assert shown.shape[:2] == expected.shape
            assert (shown[..., :3] == colours[expected]).all(), title
            overlay = pixels(page, entry.query_selector("img.overlay"))
            assert ((overlay[..., 3] > 0) == (expected > 0)).all()
            picture = pixels(page, entry.query_selector("img.original"))
            assert (picture[..., :3] == logged_image(record)).all()
            rows = entry.query_selector_all(".legend tr[data-class]")
            assert [int(r.get_attribute("data-class")) for r in rows] == \
                np.unique(expected).tolist()
        assert "predict_images · 83×61" in entries[0].query_selector("h2").inner_text()
        # run again: the same version answers the same masks, from the bytes logged
        for entry in (entries[0], entries[1]):
            entry.query_selector("button.rerun").click()
            agreement = entry.wait_for_selector(".rerun-agreement")
            assert float(agreement.get_attribute("data-agreement")) == 1.0
            assert "pixel agreement 100.00%" in agreement.inner_text()
            ious = entry.query_selector_all(".rerun-result .iou tr[data-class]")
            assert ious and all("1.000" in r.inner_text() for r in ious)
        shot(page, tmp_path, "rerun")
        page.set_viewport_size({"width": 390, "height": 844})  # a phone: no sideways scroll
        shot(page, tmp_path, "requests-phone")
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        # the page reads only the log's own files
        code, body = http("GET", url + "api/requests/item?id=/etc/passwd@0")
        assert code == 404 and "no longer in the log" in body["error"]
    finally:
        stop(proc)


def test_a_truncated_or_corrupt_log_file_shows_its_error_and_what_it_holds(
        page, logged, tmp_path):
    server, prefix, records = logged
    [source] = prefix.parent.glob(prefix.name + ".*.tfrecord")
    raw = source.read_bytes()
    end = 0  # the fixture's records (another test's reruns are logged after them)
    for _ in records:
        end += 12 + int.from_bytes(raw[end:end + 8], "little") + 4
    raw = raw[:end]
    logs = tmp_path / "copy"
    logs.mkdir()
    cut = logs / "deeplab.1000.tfrecord"  # the last record cut short
    cut.write_bytes(raw[:-10])
    bad = logs / "deeplab.2000.tfrecord"  # the second record's data changed
    first = 12 + int.from_bytes(raw[:8], "little") + 4
    broken = bytearray(raw)
    broken[first + 12 + 40] ^= 0xFF
    bad.write_bytes(bytes(broken))
    before = {p.name: p.read_bytes() for p in logs.iterdir()}
    proc, url = start_ui("--server", f"127.0.0.1:{server.rest_port}", "--request-log",
                         str(logs))
    try:
        # the cut file: all but its last request; the corrupt one: its first request
        entries = open_requests(page, url, len(records) - 1 + 1)
        shot(page, tmp_path, "broken-log")
        errors = [e.inner_text() for e in page.query_selector_all("#log-problems .log-error")]
        assert len(errors) == 2, errors
        assert any(str(cut) in e and "cut short" in e and
                   f"the {len(records) - 1} request(s) before it are shown" in e
                   for e in errors), errors
        assert any(str(bad) in e and f"corrupt record data at byte {first}" in e and
                   "the 1 request(s) before it are shown" in e for e in errors), errors
        assert all(e.query_selector("img.request-mask") for e in entries)
    finally:
        stop(proc)
    assert {p.name: p.read_bytes() for p in logs.iterdir()} == before  # only read


def test_the_log_of_a_recorded_server_is_found_from_its_config(logged, tmp_path):
    """`tfdeploy ui --name` and `tfdeploy requests --name` find a server's logs in its
    model config file (one lookup: runtime.manage.request_logs); a filename_prefix is a
    log path too."""
    import json

    from conftest import run_cli

    from tfdeploy.runtime.manage import request_logs
    from tfdeploy.runtime.state import ServerRecord
    from tfdeploy.webui.server import request_logs as ui_logs

    server, prefix, records = logged
    config = next(prefix.parent.parent.glob("models.config"))
    record = ServerRecord(name="t", runtime="embedded", model_name="deeplab",
                          base_path="", host="127.0.0.1", grpc_port=server.grpc_port,
                          rest_port=server.rest_port, model_config_file=str(config))
    assert request_logs(record) == {"deeplab": prefix}
    assert ui_logs(None, record) == [prefix]
    assert ui_logs(str(tmp_path), record) == [tmp_path]  # given: that one
    for runtime in ("docker", "native"):  # tensorflow_model_server logs nothing
        assert request_logs(ServerRecord(**{**record.to_json(), "runtime": runtime})) == {}
    listed = json.loads(run_cli("requests", prefix, "--json").stdout)["requests"]
    assert len(listed) >= len(records)
    proc = run_cli("ui", "--request-log", tmp_path / "no" / "such", check=False)
    assert proc.returncode != 0 and "no such file, directory or log prefix" in proc.stderr


def test_ui_and_requests_by_name_read_the_servers_log(demo_base, tmp_path):
    """A server `tfdeploy serve` started with a logging_config: `tfdeploy requests --name`
    lists its log and `tfdeploy ui --name` browses it, both from its model config."""
    import json
    from urllib.parse import quote

    from conftest import run_cli

    prefix = tmp_path / "logs" / "deeplab"
    config = _config(tmp_path, demo_base, {"deeplab": _logging(1.0, prefix)})
    run_cli("serve", "--runtime", "embedded", "--name", "ui-log", "--grpc-port", "0",
            "--rest-port", "0", "--model-config-file", str(config), "--timeout", "300")
    proc = None
    try:
        run_cli("predict", "--name", "ui-log", demo_images()[0], "-o", tmp_path / "masks")
        [record] = _wait_records(prefix, 1)
        listed = json.loads(run_cli("requests", "--name", "ui-log", "--json").stdout)
        assert [(r["model"], r["signature"], r["image_sizes"])
                for r in listed["requests"]] == [("deeplab", "serving_default", ["320x240"])]
        proc, url = start_ui("--name", "ui-log")
        code, info = http("GET", url + "api/info")
        assert code == 200 and info["request_logs"] == [str(prefix)]
        code, listing = http("GET", url + "api/requests")
        assert code == 200 and listing["total"] == 1 and listing["problems"] == []
        code, item = http("GET", url + "api/requests/item?id=" +
                          quote(listing["entries"][0]["id"]))
        assert code == 200
        shown = np.asarray(Image.open(io.BytesIO(
            base64.b64decode(item["images"][0]["mask"]["mask_png"]))))
        np.testing.assert_array_equal(shown, logged_mask(record))
    finally:
        if proc is not None:
            stop(proc)
        run_cli("stop", "ui-log", check=False)


def test_the_list_is_paged_newest_first(page, logged, tmp_path):
    """Twelve requests: ten on the first page, the two oldest on the next."""
    from tfdeploy.tfs import tfrecord

    server, _, records = logged
    log = tmp_path / "many.1.tfrecord"
    many = []
    for n in range(12):
        record = type(records[0])()
        record.CopyFrom(records[n % len(records)])
        record.log_metadata.timestamp_secs = 1_700_000_000 + n
        many.append(record)
    log.write_bytes(b"".join(tfrecord.frame(r.SerializeToString()) for r in many))
    proc, url = start_ui("--server", f"127.0.0.1:{server.rest_port}", "--request-log",
                         str(log))
    try:
        entries = open_requests(page, url, 10)
        assert page.inner_text("#req-range") == "1–10 of 12, newest first"
        assert "2023-11-14 22:13:31 UTC" in entries[0].inner_text()  # n = 11
        page.click("#req-older")
        page.wait_for_function("document.querySelector('#req-range').innerText"
                               ".startsWith('11–12')")
        page.wait_for_function(
            "document.querySelectorAll('.request-entry.done').length == 2")
        older = page.query_selector_all(".request-entry")
        assert "2023-11-14 22:13:20 UTC" in older[-1].inner_text()  # n = 0
        assert page.is_disabled("#req-older") and page.is_enabled("#req-newer")
        shot(page, tmp_path, "page-2")
    finally:
        stop(proc)


def test_a_page_without_a_request_log_has_no_requests_view(page, logged):
    server, _, _ = logged
    proc, url = start_ui("--server", f"127.0.0.1:{server.rest_port}")
    try:
        open_page(page, url)
        assert page.is_hidden("#views") and page.is_hidden("#requests")
        code, body = http("GET", url + "api/requests")
        assert code == 404 and body["error"].startswith("No request log")
    finally:
        stop(proc)


def test_numeric_inputs_that_are_no_image_are_said_plainly(tmp_path):
    """A logged Predict whose input is not [H, W, 3] pixels: no picture, one plain line."""
    from tensorflow_serving.apis import prediction_log_pb2

    from tfdeploy.client import request_log
    from tfdeploy.tfs import tfrecord

    log = prediction_log_pb2.PredictionLog()
    log.log_metadata.model_spec.name = "hp2"
    log.predict_log.request.inputs["x"].CopyFrom(
        tensors.to_proto(np.zeros((2, 1), np.float32)))
    log.predict_log.response.outputs["y"].CopyFrom(
        tensors.to_proto(np.ones((2, 1), np.float32)))
    path = tmp_path / "x.1.tfrecord"
    path.write_bytes(tfrecord.frame(log.SerializeToString()))
    found, problems = request_log.scan(path)
    assert problems == [] and len(found) == 1 and found[0].log is None
    [item] = request_log.logged_images(found[0])
    assert item.picture is None and item.note == \
        "inputs x float32 [2, 1]: no image among them"
