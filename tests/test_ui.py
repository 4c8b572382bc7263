"""``tfdeploy ui`` in a real browser: Debian's headless Chromium driven by Playwright,
against the real ``tfdeploy ui`` process proxying a real tfdeploy-model-server that
serves two real exports (the demo checkpoint, and the demo with one logit shifted so
their masks differ).  Screenshots of every state go under each test's temp dir."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, export_json, run_cli
from PIL import Image
from servers import ServerProcess, free_port, http
from ui_browser import open_page, pixels, shot, start_ui, stop, wait_results

from tfdeploy.client.compare import compare_masks
from tfdeploy.client.predict import Client
from tfdeploy.demo import demo_images
from tfdeploy.palette import voc_colormap


@pytest.fixture(scope="module")
def two_versions(demo_base, tmp_path_factory) -> Path:
    """Version 1: the demo export; version 2: the demo checkpoint with the background
    logit lowered, so shapes grow a little and the masks differ at their edges."""
    from tfdeploy.demo import DEMO_CHECKPOINT
    from tfdeploy.export.checkpoint import locate, write_checkpoint

    tmp = tmp_path_factory.mktemp("ui_models")
    base = tmp / "deeplab"
    shutil.copytree(demo_base / "1", base / "1")
    source = locate(DEMO_CHECKPOINT)
    weights = source.load_weights()
    bias = "DeepLab_v3/logits/biases"
    weights[bias] = weights[bias].copy()
    weights[bias][0] -= 3.0
    write_checkpoint(tmp / "shifted", source.config, weights)
    export_json(str(tmp / "shifted"), "--output", str(base), "--version", "2",
                "--no-verify", "--no-warmup")
    return base


@pytest.fixture(scope="module")
def model_server(two_versions, tmp_path_factory):
    """Both versions served, labelled stable (1) and canary (2)."""
    tmp = tmp_path_factory.mktemp("ui_server")
    config = tmp / "models.config"
    config.write_text(f"""model_config_list {{ config {{
      name: "deeplab" base_path: "{two_versions}" model_platform: "tensorflow"
      model_version_policy {{ all {{}} }}
      version_labels {{ key: "stable" value: 1 }}
      version_labels {{ key: "canary" value: 2 }}
    }} }}""")
    server = ServerProcess(f"--model_config_file={config}",
                           "--allow_version_labels_for_unavailable_models", log_dir=tmp)
    try:
        server.wait_for(lambda s: s.get(1) == "AVAILABLE" and s.get(2) == "AVAILABLE",
                        timeout=300)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def ui_url(model_server):
    proc, url = start_ui("--server", f"127.0.0.1:{model_server.rest_port}", "--classes", "demo")
    yield url
    stop(proc)


def api_mask(server: ServerProcess, image: Path, version: int | None = None) -> np.ndarray:
    with Client(f"127.0.0.1:{server.rest_port}", "rest", version=version) as client:
        return np.asarray(client.predict(image))


def test_page_shows_the_masks_the_api_returns(page, ui_url, model_server, tmp_path):
    images = demo_images()
    open_page(page, ui_url)
    page.set_input_files("#images", [str(p) for p in images])
    wait_results(page, len(images))
    shot(page, tmp_path, "masks")
    cards = page.query_selector_all(".result")
    colours = voc_colormap(256)
    for card, image in zip(cards, images, strict=True):
        assert card.query_selector("h2").inner_text() == image.name
        expected = api_mask(model_server, image)  # latest: version 2
        shown = pixels(page, card.query_selector("img.mask"))
        assert shown.shape[:2] == expected.shape
        assert (shown[..., :3] == colours[expected]).all(), image.name
        overlay = pixels(page, card.query_selector("img.overlay"))
        assert ((overlay[..., 3] > 0) == (expected > 0)).all()
        painted = expected > 0
        assert (overlay[..., :3][painted] == colours[expected][painted]).all()
        # legend: each class in the mask with its share; the version and latency shown
        rows = card.query_selector_all(".legend tr[data-class]")
        classes, counts = np.unique(expected, return_counts=True)
        assert [int(r.get_attribute("data-class")) for r in rows] == classes.tolist()
        for row, n in zip(rows, counts, strict=True):
            assert f"{100 * n / expected.size:.2f}%" in row.inner_text()
        assert card.query_selector(".legend").inner_text().count("background") == 1
        assert re.fullmatch(r"\d+(\.\d+)? ms", card.query_selector(".latency").inner_text())
        assert "latest (version 2)" in card.query_selector(".meta").inner_text()
    # the opacity slider changes what is drawn over the image, not the mask
    cards[0].query_selector("input.opacity").fill("20")
    assert cards[0].query_selector("img.overlay").evaluate("i => i.style.opacity") == "0.2"
    # a phone's width: everything still fits without sideways scrolling
    page.set_viewport_size({"width": 390, "height": 844})
    shot(page, tmp_path, "phone")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390


def test_large_images_are_shown_smaller_but_segmented_whole(page, ui_url, model_server,
                                                            tmp_path):
    large = tmp_path / "large.png"
    Image.open(demo_images()[2]).resize((1600, 1200), Image.BILINEAR).save(large)
    open_page(page, ui_url)
    page.set_input_files("#images", str(large))
    wait_results(page, 1)
    mask = page.query_selector(".result img.mask")
    assert mask.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [1600, 1200]
    assert mask.evaluate("i => i.clientWidth") < 600  # a third of a 1100 px page
    shown = pixels(page, mask)
    assert (shown[..., :3] == voc_colormap(256)[api_mask(model_server, large)]).all()
    assert "original 1600×1200" in page.inner_text(".result")


def test_dropped_images_are_segmented(page, ui_url, model_server, tmp_path):
    """Drag and drop: the browser's drop event with the files, as a desktop sends it."""
    image = demo_images()[3]
    open_page(page, ui_url)
    page.evaluate("""([name, b64]) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const data = new DataTransfer();
        data.items.add(new File([bytes], name, { type: "image/jpeg" }));
        const drop = document.querySelector("#drop");
        drop.dispatchEvent(new DragEvent("dragover", { dataTransfer: data, bubbles: true,
                                                       cancelable: true }));
        drop.dispatchEvent(new DragEvent("drop", { dataTransfer: data, bubbles: true,
                                                   cancelable: true }));
    }""", [image.name, base64.b64encode(image.read_bytes()).decode()])
    wait_results(page, 1)
    assert page.inner_text(".result h2") == image.name
    shown = pixels(page, page.query_selector(".result img.mask"))
    assert (shown[..., :3] == voc_colormap(256)[api_mask(model_server, image)]).all()
    shot(page, tmp_path, "dropped")


def test_the_app_never_imports_tensorflow():
    code = ("import sys, tfdeploy.webui.app, tfdeploy.webui.server, tfdeploy.cli.ui\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'tensorflow'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_version_and_label_choice(page, ui_url, model_server, tmp_path):
    image = demo_images()[1]
    open_page(page, ui_url)
    assert page.eval_on_selector_all("#select option", "os => os.map(o => o.value)") == \
        ["", "1", "2"]
    page.select_option("#select", "1")
    page.set_input_files("#images", str(image))
    wait_results(page, 1)
    card = page.query_selector(".result")
    assert "version 1" in card.query_selector(".meta").inner_text()
    shown = pixels(page, card.query_selector("img.mask"))
    assert (shown[..., :3] == voc_colormap(256)[api_mask(model_server, image, 1)]).all()
    # a label typed in (TF Serving's status lists none): served by its version
    page.fill("#add-label", "canary")
    page.press("#add-label", "Enter")
    page.wait_for_function("document.querySelector('.result.done .meta') &&"
                           " document.querySelector('.result.done .meta')"
                           ".innerText.includes('label canary (version 2)')")
    shot(page, tmp_path, "label")


def test_compare_mode_shows_agreement_of_two_versions(page, ui_url, model_server, tmp_path):
    images = demo_images()[:2]
    open_page(page, ui_url)
    page.check("#compare")
    page.select_option("#compare-a", "1")
    page.select_option("#compare-b", "2")
    page.set_input_files("#images", [str(p) for p in images])
    wait_results(page, 2, ".result.done .agreement")
    shot(page, tmp_path, "compare")
    for card, image in zip(page.query_selector_all(".result"), images, strict=True):
        expected = compare_masks(api_mask(model_server, image, 1),
                                 api_mask(model_server, image, 2))
        agreement = card.query_selector(".agreement")
        shown = float(agreement.get_attribute("data-agreement"))
        assert shown == pytest.approx(expected.agreement) and shown < 1.0
        assert f"{100 * expected.agreement:.2f}%" in agreement.inner_text()
        ious = card.query_selector_all(".iou tr[data-class]")
        assert [int(r.get_attribute("data-class")) for r in ious] == list(expected.iou)
        for row, value in zip(ious, expected.iou.values(), strict=True):
            assert f"{value:.3f}" in row.inner_text()
        assert len(card.query_selector_all("img.overlay")) == 2
        assert card.query_selector("img.diff") is not None


def test_errors_are_shown_in_plain_words(page, ui_url, two_versions, tmp_path):
    open_page(page, ui_url)
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a picture")
    import json

    from tfdeploy.tfs.versions import METADATA_FILE

    limit = json.loads((two_versions / "2" / METADATA_FILE).read_text())["max_pixels"]
    side = int(limit ** 0.5)
    huge = tmp_path / "huge.png"  # over the export's --max-pixels, a few KB as a file
    Image.new("L", (side + 100, side)).save(huge)
    page.set_input_files("#images", [str(bad), str(huge)])
    wait_results(page, 2, ".result.failed .error")
    shot(page, tmp_path, "bad-files")
    errors = [e.inner_text() for e in page.query_selector_all(".result .error")]
    assert errors[0].startswith("Cannot read this file as an image: not an image")
    assert errors[1].startswith("Image too large:") and f"{side}x{side}" in errors[1]
    # a model the server does not have
    page.fill("#model", "nope")
    page.dispatch_event("#model", "change")
    page.wait_for_selector("#error:not([hidden])")
    assert "The server has no model 'nope'" in page.inner_text("#error")
    # the masks of the model shown before are gone, not left under the wrong name
    page.wait_for_function("document.querySelectorAll('.result').length == 0")
    shot(page, tmp_path, "wrong-model")


def test_no_server_is_shown(page, tmp_path):
    dead = free_port()
    proc, url = start_ui("--server", f"127.0.0.1:{dead}")
    try:
        page.goto(url)
        page.wait_for_selector("#error:not([hidden])")
        text = page.inner_text("#error")
        assert text.startswith(f"No model server answers at 127.0.0.1:{dead}")
        shot(page, tmp_path, "no-server")
    finally:
        stop(proc)


def test_uploads_over_the_page_limit_are_refused(page, model_server, tmp_path):
    proc, url = start_ui("--server", f"127.0.0.1:{model_server.rest_port}",
                         "--max-upload-mb", "0.01")
    try:
        big = tmp_path / "big.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 80, 3), np.uint8)
                        ).save(big)
        assert big.stat().st_size > 0.01 * 2**20
        open_page(page, url)
        page.set_input_files("#images", str(big))
        wait_results(page, 1, ".result.failed .error")
        error = page.inner_text(".result .error")
        assert error.startswith("Image too large: the file is") and \
            "this page takes at most 0.01 MB (tfdeploy ui --max-upload-mb)" in error
    finally:
        stop(proc)


def test_ui_help_has_an_example():
    out = subprocess.run([sys.executable, "-m", "tfdeploy", "ui", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert "Examples:" in out.stdout and "tfdeploy ui --server" in out.stdout


def test_ui_refuses_name_and_server_together():
    out = subprocess.run([sys.executable, "-m", "tfdeploy", "ui", "--name", "x", "--server",
                          "127.0.0.1:1"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode != 0 and "give --name or --server, not both" in out.stderr


def test_labels_and_class_names_of_a_recorded_server(model_server, two_versions, tmp_path):
    """A server `tfdeploy serve` started: its config file's labels are listed (TF
    Serving's status API has none), and the legend's names come from its export."""
    from tfdeploy.runtime.state import ServerRecord
    from tfdeploy.webui.app import Backend
    from tfdeploy.webui.server import class_names, record_labels

    config = next(Path(model_server.log_path).parent.glob("models.config"))
    record = ServerRecord(name="t", runtime="embedded", model_name="deeplab",
                          base_path=str(two_versions), host="127.0.0.1",
                          grpc_port=model_server.grpc_port, rest_port=model_server.rest_port,
                          command=["python", f"--model_config_file={config}"])
    labels = record_labels(record)
    assert labels == {"deeplab": {"stable": 1, "canary": 2}}
    # version 2 is the shifted demo checkpoint: 5 classes, not the demo's own checkpoint
    assert class_names("auto", record) == []
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "1").symlink_to(two_versions / "1")  # the demo's own export
    demo = ServerRecord(**{**record.to_json(), "base_path": str(tmp_path / "demo"),
                           "command": []})
    assert class_names("auto", demo) == ["background", "circle", "square", "triangle",
                                         "star"]
    assert record_labels(demo) == {}
    assert class_names("a, b") == ["a", "b"] and class_names("voc")[15] == "person"
    status = Backend(f"127.0.0.1:{model_server.rest_port}",
                     ["deeplab"], labels=labels).status("deeplab")
    assert status["labels"] == {"canary": 2, "stable": 1}
    assert [v["version"] for v in status["versions"]] == [1, 2]


def test_ui_by_name_lists_the_recorded_servers_labels(page, two_versions, tmp_path):
    """`tfdeploy ui --name` finds the server `tfdeploy serve` started, and the page's
    menus offer the labels of its model config file."""
    config = tmp_path / "models.config"
    config.write_text(f"""model_config_list {{ config {{
      name: "deeplab" base_path: "{two_versions}" model_platform: "tensorflow"
      model_version_policy {{ all {{}} }}
      version_labels {{ key: "stable" value: 1 }}
    }} }}""")
    run_cli("serve", "--runtime", "embedded", "--name", "ui-by-name", "--grpc-port", "0",
            "--rest-port", "0", "--model-config-file", str(config), "--timeout", "300",
            "--", "--allow_version_labels_for_unavailable_models")
    proc = None
    try:
        proc, url = start_ui("--name", "ui-by-name")
        code, info = http("GET", url + "api/info")
        assert code == 200 and info["models"] == ["deeplab"]
        open_page(page, url)
        options = page.eval_on_selector_all("#select option", "os => os.map(o => o.value)")
        assert options == ["", "1", "2", "stable"]
        page.select_option("#select", "stable")
        page.set_input_files("#images", str(demo_images()[0]))
        wait_results(page, 1)
        assert "label stable (version 1)" in page.inner_text(".result .meta")
        shot(page, tmp_path, "by-name")
    finally:
        if proc is not None:
            stop(proc)
        run_cli("stop", "ui-by-name", check=False)
