"""tfdeploy promote / rollback against a real embedded server with three versions of the
demo model: 1 (the demo export), 2 (the same SavedModel again: a good candidate) and 3
(the demo's network with random weights: a deliberately worse one).

The server is started the way users start it (``tfdeploy.serve`` with a model config file
it polls every second), so the tests see the config rewrite, the poll and the state dir's
label history as they happen for real."""

from __future__ import annotations

import base64
import json
import shutil
import threading
import time
from pathlib import Path

import grpc
import pytest
from conftest import ALL_VERSIONS_CONFIG as CONFIG
from conftest import run_cli
from servers import http

from tfdeploy.demo import DEMO_IMAGES


@pytest.fixture(scope="module")
def three_versions(demo_base: Path, tmp_path_factory) -> Path:
    """A base path with the demo as versions 1 and 2 and a random-weight demo as 3."""
    from tfdeploy.export.checkpoint import write_checkpoint
    from tfdeploy.export.config import ModelConfig
    from tfdeploy.export.model import random_weights

    base = tmp_path_factory.mktemp("promote") / "deeplab"
    shutil.copytree(demo_base / "1", base / "1")
    shutil.copytree(demo_base / "1", base / "2")
    doc = json.loads((DEMO_IMAGES.parent / "checkpoint" / "config.json").read_text())
    worse = tmp_path_factory.mktemp("worse_ckpt")
    cfg = ModelConfig.from_json(doc)
    write_checkpoint(worse, cfg, random_weights(cfg, seed=7))
    run_cli("export", worse, "--output", base, "--version", "3", "--no-verify",
            "--no-warmup")
    return base


#: the model config file as a person writes it: comments, blank lines, two models; a
#: label move must keep every byte of it but the label's own
COMMENTED = """\
# Segmentation models.  Move labels with tfdeploy promote / rollback, not by hand!
model_config_list {{

  # the one being rolled out: every version loaded, so the label can move
  config {{
    name: "deeplab"    # clients use labels/stable
    base_path: "{base}"
    model_platform: "tensorflow"
    model_version_policy {{ all {{ }} }}  # {{ not a brace }}
  }}

  config {{ name: "other" base_path: "{base}"
           model_version_policy {{ specific {{ versions: 1 }} }} }}
}}
# end
"""


@pytest.fixture
def served(three_versions: Path, tmp_path: Path):
    """An embedded server polling its model config file (``COMMENTED``) every second,
    with label stable set to 1 by a first promote (Python API): a label not set yet needs
    no comparison.  (It cannot be in the file from the start: at start-up no version is
    AVAILABLE yet, and tensorflow_model_server refuses such a label just as ours does.)
    The promote adds the label's entry to the file after the model's last field, with
    its indentation, and changes nothing else."""
    import tfdeploy

    config = tmp_path / "models.config"
    written = COMMENTED.format(base=three_versions)
    config.write_text(written)
    name = f"promote-{time.time_ns()}"
    server = tfdeploy.serve(None, runtime="embedded", name=name, grpc_port=0, rest_port=0,
                            model_config_file=config,
                            config_poll=1)
    try:
        deadline = time.monotonic() + 180
        with server.client(model="deeplab") as client:
            while client.status() != {1: "AVAILABLE", 2: "AVAILABLE", 3: "AVAILABLE"}:
                assert time.monotonic() < deadline, client.status()
                time.sleep(0.5)
        first = tfdeploy.promote("deeplab", 1, name=name)
        assert (first.moved, first.previous, first.images) == (True, None, [])
        assert config_label(config) == 1
        assert config.read_text() == written.replace(
            "{ all { } }  # { not a brace }\n",
            "{ all { } }  # { not a brace }\n"
            '    version_labels { key: "stable" value: 1 }\n')
        yield server, config
    finally:
        server.stop()


def label_now(server) -> int | None:
    from tfdeploy.rollout.promote import label_version

    return label_version(server.grpc_address, "deeplab", "stable")


def config_label(config: Path) -> int:
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    parsed = text_format.Parse(config.read_text(), model_server_config_pb2.ModelServerConfig())
    (deeplab,) = [mc for mc in parsed.model_config_list.config if mc.name == "deeplab"]
    return deeplab.version_labels["stable"]


def test_worse_version_is_refused_naming_the_images(served):
    server, config = served
    before = config.read_text()
    proc = run_cli("promote", "deeplab", "3", "--name", server.name, check=False)
    assert proc.returncode == 1, proc.stderr
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("error: not promoted: version 3 agrees with version 1"), error
    assert "scene_1.jpg" in error and "label stable stays on version 1" in error
    assert "classes that disagree most: class" in error
    # the per-image table is printed too
    assert all(f"scene_{i}.jpg" in proc.stdout for i in range(1, 5)), proc.stdout
    assert label_now(server) == 1 and config.read_text() == before


def test_unavailable_version_is_refused_with_the_reason(served):
    server, _ = served
    proc = run_cli("promote", "deeplab", "9", "--name", server.name, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: version 9 of model deeplab is not loaded on the server (versions: "
        "1 AVAILABLE, 2 AVAILABLE, 3 AVAILABLE); a label can only point at an AVAILABLE "
        "version: let the server load it (model_version_policy { specific { versions: ... "
        "} } or { all {} } in the model config)")
    rollback = run_cli("rollback", "deeplab", "--name", server.name, check=False)
    assert rollback.returncode == 2
    assert "nothing to roll back to" in rollback.stderr


class LabelLoad:
    """Clients addressing label ``stable`` over gRPC and REST until stopped; counts
    answers per version and every failure."""

    def __init__(self, server, threads: int = 2):
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        from tfdeploy.tfs import requests

        image = (DEMO_IMAGES / "scene_1.jpg").read_bytes()
        self.grpc_request = requests.encoded_image_request("deeplab", [image])
        self.grpc_request.model_spec.version_label = "stable"
        self.rest_url = f"{server.rest_url}/v1/models/deeplab/labels/stable:predict"
        self.rest_body = json.dumps({"signature_name": "serving_default", "instances": [
            {"image_bytes": {"b64": base64.b64encode(image).decode()}}]}).encode()
        self.channel = grpc.insecure_channel(server.grpc_address)
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.ok: dict[str, int] = {"grpc": 0, "rest": 0}
        self.versions: set[int] = set()
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self.run, args=(api,), daemon=True)
                        for api in ("grpc", "rest") for _ in range(threads // 2 or 1)]

    def one(self, api: str) -> None:
        if api == "grpc":
            response = self.stub.Predict(self.grpc_request, timeout=60)
            version = response.model_spec.version.value
        else:
            code, body = http("POST", self.rest_url, self.rest_body)
            if code != 200:
                raise AssertionError(f"REST {code}: {body}")
            version = None
        with self.lock:
            self.ok[api] += 1
            if version:
                self.versions.add(version)

    def run(self, api: str) -> None:
        deadline = time.monotonic() + 300  # bounded even if the test never stops us
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                self.one(api)
            except Exception as exc:  # noqa: BLE001 (every failure is the finding)
                with self.lock:
                    self.failures.append(f"{api}: {exc}")

    def __enter__(self) -> LabelLoad:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(120)
        self.channel.close()


def test_good_version_moves_the_label_under_load_and_rollback_moves_it_back(served):
    server, config = served
    before = config.read_text()
    with LabelLoad(server) as load:
        proc = run_cli("promote", "deeplab", "2", "--name", server.name, "--json")
        result = json.loads(proc.stdout)
        assert result["moved"] and result["previous"] == 1 and result["version"] == 2
        assert [Path(i["path"]).name for i in result["images"]] == [
            f"scene_{i}.jpg" for i in range(1, 5)]
        assert result["agreement"] == 1.0 and set(result["iou"].values()) == {1.0}
        assert set(result["p50_ms"]) == {"1", "2"}
        assert label_now(server) == 2 and config_label(config) == 2
        # the file keeps its comments and layout: only the label's value changed
        assert config.read_text() == before.replace('"stable" value: 1 }',
                                                    '"stable" value: 2 }')
        time.sleep(2.5)  # two polls of the rewritten file: the label stays
        assert label_now(server) == 2
        with load.lock:
            answered_before_rollback = dict(load.ok)
        back = run_cli("rollback", "deeplab", "--name", server.name)
        assert back.stdout.strip() == "label stable of deeplab: version 2 -> 1"
        assert label_now(server) == 1 and config_label(config) == 1
        assert config.read_text() == before
        time.sleep(1.5)
    assert load.failures == []
    assert all(n > 0 for n in answered_before_rollback.values()), answered_before_rollback
    assert load.versions == {1, 2}
    # nothing more to roll back to: the history was used up
    again = run_cli("rollback", "deeplab", "--name", server.name, check=False)
    assert again.returncode == 2 and "nothing to roll back to" in again.stderr


# -- which config a promote sends and rewrites (no server needed) -----------------------

def record(runtime: str, command: list[str], name: str = "r1"):
    from tfdeploy.runtime.state import ServerRecord

    return ServerRecord(name=name, runtime=runtime, model_name="deeplab",
                        base_path="/srv/models/deeplab", host="127.0.0.1", grpc_port=1,
                        rest_port=2, command=command)


def test_served_config_follows_what_serve_recorded(tmp_path):
    from tfdeploy.rollout.labels import served_config
    from tfdeploy.runtime.state import state_dir

    config = tmp_path / "models.config"
    config.write_text(CONFIG.format(base=tmp_path))
    polled = served_config(record("embedded", [
        "tfdeploy-model-server", f"--model_config_file={config}",
        "--model_config_file_poll_wait_seconds=5"]), None)
    assert polled.file == config and not polled.in_place and polled.key == str(config)
    unpolled = served_config(record("native", [f"--model_config_file={config}"]), None)
    assert unpolled.file is None  # nothing polls it: the file is left alone
    # one model from --model_base_path: the config the server built from its flags
    single = served_config(record("embedded", ["--model_name=deeplab"]), None)
    (model,) = single.config.model_config_list.config
    assert (model.name, model.base_path, single.file) == ("deeplab", "/srv/models/deeplab",
                                                          None)
    # docker: the copy serve wrote and mounted, rewritten in place (same inode)
    copy = state_dir() / "configs" / "dock.models.config"
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_text(CONFIG.format(base="/models/deeplab"))
    docker = served_config(record("docker", [
        "--model_config_file=/config/models.config",
        "--model_config_file_poll_wait_seconds=5"], name="dock"), None)
    assert docker.file == copy and docker.in_place


def test_in_place_rewrite_keeps_the_inode_and_no_prefix_parses(tmp_path):
    from google.protobuf import text_format

    from tfdeploy.rollout.labels import parse_config_file, write_config_in_place

    path = tmp_path / "models.config"
    path.write_text(CONFIG.format(base="/models/deeplab"))
    inode = path.stat().st_ino
    config = parse_config_file(path)
    config.model_config_list.config[0].version_labels["stable"] = 2
    write_config_in_place(path, text_format.MessageToString(config))
    assert path.stat().st_ino == inode and parse_config_file(path) == config
    # what a poll could read while the write is under way: nothing usable
    text = path.read_text()
    from tensorflow_serving.config import model_server_config_pb2

    for end in range(len(text.rstrip())):
        partial = model_server_config_pb2.ModelServerConfig()
        try:
            text_format.Parse(text[:end], partial)
        except text_format.ParseError:
            continue
        assert partial.WhichOneof("config") is None, text[:end]  # empty: refused by both


def test_promote_without_a_known_config_says_what_to_give():
    proc = run_cli("promote", "deeplab", "2", "--server", "127.0.0.1:1", check=False)
    assert proc.returncode == 2
    assert "give the server's model config file with --config" in proc.stderr
