"""A newcomer's first hour (issue 22): no data loss, no dead ends, errors that say what to do.

Real CLI processes against real servers on 127.0.0.1."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import ROOT, run_cli
from PIL import Image
from servers import ServerProcess

EXAMPLE = sorted((ROOT / "examples").glob("*.jpg"))[0]


@pytest.fixture(scope="module")
def server(demo_server):
    return demo_server


def test_predict_never_writes_over_an_input(tmp_path):
    """An output that is an input is refused before any request (no server needed to see
    it: the dead address is never called), and nothing is written."""
    photo = tmp_path / "alpha.png"
    Image.open(EXAMPLE).save(photo)
    before = photo.read_bytes()
    for args in (["-o", str(tmp_path)], ["-o", str(tmp_path / "sub" / "..")]):
        proc = run_cli("predict", "--server", "127.0.0.1:1", str(photo), *args, check=False)
        assert proc.returncode == 2, proc.stderr
        assert "would replace" in proc.stderr and str(photo) in proc.stderr
        assert "UNAVAILABLE" not in proc.stderr and "Traceback" not in proc.stderr
        assert photo.read_bytes() == before
    # a folder predicted into itself: the same
    proc = run_cli("predict", "--server", "127.0.0.1:1", str(tmp_path), "-o", str(tmp_path),
                   check=False)
    assert proc.returncode == 2 and "would replace" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alpha.png"]


def test_an_output_dir_named_like_a_file_is_refused(tmp_path):
    """`-o mask.png` would make a folder named mask.png: refused before any request, with
    the folder to give instead; an existing folder of that name is used as asked."""
    proc = run_cli("predict", "--server", "127.0.0.1:1", str(EXAMPLE), "-o",
                   str(tmp_path / "mask.png"), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "looks like a file name" in proc.stderr and "--output-dir" in proc.stderr
    assert "UNAVAILABLE" not in proc.stderr and not (tmp_path / "mask.png").exists()
    (tmp_path / "odd.png").mkdir()
    proc = run_cli("predict", "--server", "127.0.0.1:1", str(EXAMPLE), "-o",
                   str(tmp_path / "odd.png"), "--retries", "0", check=False)
    assert "looks like a file name" not in proc.stderr  # it got as far as the server
    with pytest.raises(Exception, match="looks like a file name"):
        import tfdeploy

        with tfdeploy.Client("127.0.0.1:1", retries=0) as client:
            client.predict_files([EXAMPLE], output_dir=tmp_path / "m.jpg")


def test_same_stem_inputs_keep_their_names(server, tmp_path):
    """tiny.jpg and tiny.png give tiny.jpg.png and tiny.png.png, listed in the summary."""
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(EXAMPLE, src / "tiny.jpg")
    Image.open(EXAMPLE).save(src / "tiny.png")
    Image.open(EXAMPLE).save(src / "other.png")
    out = tmp_path / "out"
    proc = run_cli("predict", "--server", server.grpc_target, str(src / "tiny.jpg"),
                   str(src / "tiny.png"), str(src / "other.png"), "-o", str(out))
    assert sorted(p.name for p in out.iterdir()) == ["other.png", "tiny.jpg.png",
                                                     "tiny.png.png"]
    assert f"{src / 'tiny.jpg'} -> {out / 'tiny.jpg.png'}" in proc.stdout
    assert f"{src / 'tiny.png'} -> {out / 'tiny.png.png'}" in proc.stdout
    doc = json.loads(run_cli("predict", "--server", server.grpc_target, str(src), "-o",
                             str(out), "--json").stdout)
    assert doc["summary"]["renamed"] == {str(src / "tiny.jpg"): str(out / "tiny.jpg.png"),
                                         str(src / "tiny.png"): str(out / "tiny.png.png")}
    assert not doc["summary"]["renamed"].get(str(src / "other.png"))


def test_export_refuses_version_numbers_a_server_cannot_report(tmp_path):
    """Versions are int64 in TF Serving: 1..2^63-1, given or implied by the next one."""
    out = tmp_path / "models"
    for bad in ("99999999999999999999", str(2**63), "0"):
        proc = run_cli("export", "-o", out, "--version", bad, "--no-verify", check=False)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "--version: must be between 1 and 9223372036854775807" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert not out.exists()
    (out / str(2**63 - 1)).mkdir(parents=True)  # the next version would not fit
    proc = run_cli("export", "-o", out, "--no-verify", check=False)
    assert proc.returncode == 2 and "would be 9223372036854775808" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [str(2**63 - 1)]


def test_export_checks_inputs_before_importing_tensorflow(tmp_path):
    """A typo is refused at once: TensorFlow (seconds to import) is never loaded."""
    code = ("import sys, tfdeploy\n"
            "for kw in ({'checkpoint': '/no/such/dir'}, {'version': 2**64},\n"
            "           {'probes': ['/no/probe.png']}, {'precision': 'int3'},\n"
            "           {'max_pixels': 'big'}):\n"
            "    try:\n"
            "        tfdeploy.export(output=sys.argv[1], **kw)\n"
            "    except tfdeploy.UserError as exc:\n"
            "        print(exc)\n"
            "print('tensorflow' in sys.modules)\n")
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, proc.stderr
    assert lines[0] == "/no/such/dir: no such checkpoint"
    assert lines[1].startswith("version: must be between 1 and")
    assert "/no/probe.png" in lines[2] and "int3" in lines[3] and "max_pixels" in lines[4]
    assert lines[-1] == "False", lines


def test_a_dead_server_is_named(demo_base, tmp_path):
    """After the server `tfdeploy serve` started dies, predict, bench and status name it
    and point at its log, at once, instead of trying a default port."""
    import os
    import signal
    import time

    from servers import free_port

    out = json.loads(run_cli("serve", demo_base, "--runtime", "embedded", "--name", "gone",
                             "--grpc-port", free_port(), "--rest-port", free_port(),
                             "--json").stdout)
    try:
        os.kill(out["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while json.loads(run_cli("status", "--json").stdout)[0]["running"]:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        for args in (["predict", str(EXAMPLE), "-o", str(tmp_path)], ["bench", "-n", "1"],
                     ["predict", str(EXAMPLE), "--name", "gone"]):
            started = time.monotonic()
            proc = run_cli(*args, check=False)
            assert proc.returncode == 2, proc.stderr
            assert "'gone'" in proc.stderr and "`tfdeploy logs gone`" in proc.stderr, args
            assert "refused" not in proc.stderr and "Traceback" not in proc.stderr
            assert time.monotonic() - started < 30  # no retries against a dead port
        text = run_cli("status").stdout
        assert "gone: NOT RUNNING" in text and "`tfdeploy logs gone`" in text
        assert "`tfdeploy logs gone`" in json.loads(
            run_cli("status", "--json").stdout)[0]["hint"]
    finally:
        run_cli("stop", "gone", check=False)


def _config(path, models: dict) -> None:
    """A ModelServerConfig text proto: name -> (base path, {label: version})."""
    parts = []
    for name, (base, labels) in models.items():
        policy = ("model_version_policy { specific { "
                  + " ".join(f"versions: {v}" for v in sorted(set(labels.values())))
                  + " } } " if labels else "")
        label_text = " ".join(f'version_labels {{ key: "{k}" value: {v} }}'
                              for k, v in labels.items())
        parts.append(f'config {{ name: "{name}" base_path: "{base}" '
                     f'model_platform: "tensorflow" {policy}{label_text} }}')
    path.write_text("model_config_list {\n  " + "\n  ".join(parts) + "\n}\n")


def _serve(*args, check=True):
    from servers import free_port

    return run_cli("serve", "--runtime", "embedded", "--grpc-port", free_port(),
                   "--rest-port", free_port(), *args, check=check, timeout=300)


def test_serve_with_a_model_config_waits_for_its_models_and_polls_it(demo_base, tmp_path):
    """No model called deeplab: serve waits for the config's own models, then follows
    edits of the file (polling is on by default)."""
    import time

    from servers import http

    config = tmp_path / "models.config"
    _config(config, {"seg_a": (demo_base, {}), "seg_b": (demo_base, {})})
    started = time.monotonic()
    out = json.loads(_serve("--model-config-file", config, "--name", "multi",
                            "--timeout", "120", "--json").stdout)
    try:
        assert time.monotonic() - started < 100  # not the whole --timeout
        assert "--model_config_file_poll_wait_seconds=5" in out["command"]
        rest = f"http://127.0.0.1:{out['rest_port']}"
        for model in ("seg_a", "seg_b"):
            code, body = http("GET", f"{rest}/v1/models/{model}")
            assert code == 200 and body["model_version_status"][0]["state"] == "AVAILABLE"
        _config(config, {"seg_a": (demo_base, {}), "seg_c": (demo_base, {})})
        deadline = time.monotonic() + 60
        while http("GET", f"{rest}/v1/models/seg_c")[0] != 200:
            assert time.monotonic() < deadline, "the edited config was never read"
            time.sleep(0.5)
    finally:
        run_cli("stop", "multi", check=False)
    assert "--config-poll SECONDS" in run_cli("serve", "--help").stdout


def test_serve_of_an_empty_base_path_fails_at_once(demo_base, tmp_path):
    """Nothing to load: said at once with the server's own log line, not after --timeout."""
    import time

    empty = tmp_path / "empty"
    empty.mkdir()
    started = time.monotonic()
    proc = _serve(empty, "--name", "empty", "--timeout", "170", check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "server empty found no version of its model to load" in proc.stderr
    assert "No versions of servable deeplab found" in proc.stderr
    assert time.monotonic() - started < 90
    # in a config: the model that cannot come up is named, with its log line
    config = tmp_path / "models.config"
    _config(config, {"good": (demo_base, {}), "bad": (empty, {})})
    proc = _serve("--model-config-file", config, "--name", "half", "--timeout", "170",
                  check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "model bad found no version to load" in proc.stderr
    assert "No versions of servable bad found" in proc.stderr
    assert "good" not in proc.stderr.split("model status:")[1].split(";")[0]
    assert "Traceback" not in proc.stderr
    assert time.monotonic() - started < 170
    assert "half" not in run_cli("status").stdout and "empty" not in run_cli("status").stdout


def test_models_and_labels_end_to_end(demo_base, tmp_path):
    """predict/bench/Client take --model and --label (gRPC and REST); status shows each
    model's versions and labels and follows the config file as it changes."""
    import time

    from tfdeploy.client.predict import Client

    base = tmp_path / "seg"
    for v in ("1", "2"):
        shutil.copytree(demo_base / "1", base / v)
    config = tmp_path / "models.config"
    _config(config, {"seg_a": (base, {"stable": 1, "canary": 2}), "seg_b": (demo_base, {})})
    # labels of versions still loading are refused at start-up unless allowed, as
    # tensorflow_model_server does
    out = json.loads(_serve("--model-config-file", config, "--name", "labels",
                            "--config-poll", "1", "--json", "--",
                            "--allow_version_labels_for_unavailable_models=true").stdout)
    try:
        proc = run_cli("predict", str(EXAMPLE), "-o", tmp_path / "m", check=False)
        assert proc.returncode == 2 and "several models (seg_a, seg_b)" in proc.stderr
        assert "--model" in proc.stderr
        for transport in ("grpc", "rest"):
            doc = json.loads(run_cli("predict", str(EXAMPLE), "--model", "seg_a", "--label",
                                     "stable", "--transport", transport, "-o",
                                     tmp_path / transport, "--json").stdout)
            assert doc["summary"]["ok"] == 1
            proc = run_cli("predict", str(EXAMPLE), "--model", "seg_a", "--label", "nosuch",
                           "--transport", transport, "-o", tmp_path / "x", check=False)
            assert proc.returncode == 2 and "nosuch" in proc.stderr, proc.stderr
        proc = run_cli("predict", str(EXAMPLE), "--model", "seg_a", "--version", "stable",
                       check=False)
        assert proc.returncode == 2 and "--label stable" in proc.stderr
        run_cli("bench", "-n", "2", "--model", "seg_a", "--label", "canary")
        with Client(f"127.0.0.1:{out['grpc_port']}", model="seg_a", label="canary") as c:
            assert c.predict(EXAMPLE).size == Image.open(EXAMPLE).size
        text = run_cli("status").stdout
        assert "model seg_a: v1 AVAILABLE, v2 AVAILABLE (labels canary=v2, stable=v1)" in text
        assert "model seg_b: v1 AVAILABLE" in text
        listed = json.loads(run_cli("status", "--json").stdout)[0]
        assert listed["model_labels"] == {"seg_a": {"canary": 2, "stable": 1}, "seg_b": {}}
        # the config changes: seg_b goes, status follows, and seg_a is now the default
        _config(config, {"seg_a": (base, {"stable": 2})})
        deadline = time.monotonic() + 60
        while json.loads(run_cli("status", "--json").stdout)[0]["model_labels"] != {
                "seg_a": {"stable": 2}}:
            assert time.monotonic() < deadline
            time.sleep(0.5)
        assert "seg_b" not in run_cli("status").stdout
        doc = json.loads(run_cli("predict", str(EXAMPLE), "-o", tmp_path / "d",
                                 "--json").stdout)
        assert doc["summary"]["ok"] == 1
    finally:
        run_cli("stop", "labels", check=False)


def test_bench_and_predict_output_formats(server, tmp_path):
    """--csv - and --json put only that format on stdout; a fixed window says `fixed`,
    not `stable yes`; endpoint counts count prediction requests only."""
    import csv
    import io

    target = server.grpc_target
    proc = run_cli("bench", str(EXAMPLE), "--server", target, "-n", "3", "-c", "1,2",
                   "--csv", "-")
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert proc.stdout.startswith("concurrency,") and len(rows) == 2
    assert all(r["requests"] == "3" and r["stable"] == "" for r in rows)
    assert "p50 ms" in proc.stderr and "fixed" in proc.stderr and " yes" not in proc.stderr
    doc = json.loads(run_cli("bench", str(EXAMPLE), "--server", target, "-n", "2",
                             "--json").stdout)
    assert doc["levels"][0]["stable"] is None
    assert doc["levels"][0]["endpoints"] == {target: 2}
    table = run_cli("bench", str(EXAMPLE), "--server", target, "--duration", "0.3").stdout
    assert table.splitlines()[-1].endswith("fixed")
    doc = json.loads(run_cli("predict", str(EXAMPLE), "--server", target, "-o",
                             tmp_path, "--json").stdout)
    assert doc["summary"]["endpoints"] == {target: 1}
    assert "--request-rate-range START:END[:STEP]" in run_cli("bench", "--help").stdout


def test_python_quickstart_runs_as_written_from_anywhere(tmp_path):
    """examples/quickstart.py runs from another directory (its server has its own name
    and free ports), and the README shows that file's code."""
    import os
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "exported version 1" in out and "versions: {1: 'AVAILABLE'}" in out
    assert "bytes: True" in out and "4 masks with asyncio" in out
    assert "4 of 4 images" in out and "concurrency 2:" in out and "done; files in" in out
    assert "quickstart" not in run_cli("status").stdout  # stopped and forgotten
    readme = (ROOT / "README.md").read_text()
    code = (ROOT / "examples" / "quickstart.py").read_text()
    assert f"```python\n{code}```" in readme


def test_python_errors_name_python_arguments_and_paths(tmp_path):
    import tfdeploy
    from tfdeploy.runtime.base import ServeSpec

    with pytest.raises(tfdeploy.UserError) as err:
        ServeSpec(base_path=tmp_path, cpus=1).check_runtime("embedded", "embedded")
    assert "takes cpus" in str(err.value) and "--" not in str(err.value)
    assert "takes --cpus" in err.value.flag_text()
    assert tfdeploy.demo.images()[0].is_absolute() and tfdeploy.demo.images()[0].is_file()
    with tfdeploy.Client("127.0.0.1:1") as client, pytest.raises(tfdeploy.BadImage) as bad:
        client.predict("no/such/scene.jpg")
    assert "no/such/scene.jpg: no such file" in str(bad.value)
    assert str(ROOT / "no/such/scene.jpg") in str(bad.value) or "looked for" in str(bad.value)


def test_python_results_key_classes_by_integer_index(server, tmp_path):
    import tfdeploy

    with tfdeploy.Client(server.grpc_target) as client:
        (result,) = client.predict_files([EXAMPLE], output_dir=tmp_path)
    assert result.ok and result.classes and all(type(k) is int for k in result.classes)
    assert sum(result.classes.values()) == result.height * result.width


def test_smaller_items(server, tmp_path):
    """A missing file is reported once; `manifest k8s` says what to type; manifests are
    readable by others (the umask's mode, not mkstemp's 0600)."""
    import os

    proc = run_cli("predict", "--server", server.grpc_target, str(EXAMPLE),
                   str(tmp_path / "nothere.jpg"), "-o", tmp_path / "m", check=False)
    assert proc.returncode == 1 and proc.stderr.count("nothere.jpg") == 1, proc.stderr
    assert "1 images: 1 ok" in proc.stdout
    proc = run_cli("manifest", "k8s", check=False)
    assert proc.returncode == 2 and "`tfdeploy manifest -t k8s SOURCE`" in proc.stderr
    out = tmp_path / "deploy"
    run_cli("manifest", "-t", "k8s", "gs://bucket/deeplab", "-o", out)
    umask = os.umask(0o022)
    os.umask(umask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert modes and set(modes.values()) == {0o666 & ~umask}, modes


def test_size_limit_error_is_readable_and_says_max_side(tmp_path):
    """No escaped apostrophe, and how to send a smaller image."""
    base = tmp_path / "small"
    run_cli("export", "-o", base, "--max-pixels", "64x64", "--no-verify", "--no-warmup")
    srv = ServerProcess("--model_name=deeplab", f"--model_base_path={base}",
                        log_dir=tmp_path)
    try:
        srv.wait_available(1)
        proc = run_cli("predict", "--server", srv.grpc_target, str(EXAMPLE), "-o",
                       tmp_path / "m", check=False)
        assert proc.returncode == 1
        assert "larger than this model allows: limit of 64x64" in proc.stderr, proc.stderr
        assert "\\'" not in proc.stderr and "--max-side N" in proc.stderr
        run_cli("predict", "--server", srv.grpc_target, str(EXAMPLE), "--max-side", "32",
                "-o", tmp_path / "m")
    finally:
        srv.stop()


def test_class_names_come_with_per_class_results(demo_base, tmp_path):
    """The export records the demo's class names; predict through a server tfdeploy
    started reports them next to the per-class pixel counts."""
    meta = json.loads((demo_base / "1" / "assets.extra" / "tfdeploy.json").read_text())
    assert meta["class_names"] == ["background", "circle", "square", "triangle", "star"]
    out = json.loads(_serve(demo_base, "--name", "names", "--json").stdout)
    try:
        for args in ([], ["--server", f"127.0.0.1:{out['grpc_port']}"]):
            doc = json.loads(run_cli("predict", str(EXAMPLE), *args, "-o", tmp_path,
                                     "--json").stdout)
            names = doc["summary"]["class_names"]
            assert names == {"0": "background", "1": "circle", "2": "square",
                             "3": "triangle", "4": "star"}
            assert set(doc["results"][0]["classes"]) <= set(names)
    finally:
        run_cli("stop", "names", check=False)


def test_serve_name_collision_names_the_argument_of_its_caller(demo_base):
    """A second server under a name the CLI already runs: Python's serve() says ``name``,
    the CLI says ``--name``; neither starts anything (issue 22: the error named a CLI flag
    to Python callers)."""
    from servers import free_port

    import tfdeploy

    run_cli("serve", demo_base, "--runtime", "embedded", "--name", "taken",
            "--grpc-port", free_port(), "--rest-port", free_port())
    try:
        with pytest.raises(tfdeploy.UserError) as err:
            tfdeploy.serve(demo_base, runtime="embedded", name="taken",
                           grpc_port=free_port(), rest_port=free_port())
        text = str(err.value)
        assert "already running" in text and "choose another name" in text
        assert "--name" not in text
        proc = run_cli("serve", demo_base, "--runtime", "embedded", "--name", "taken",
                       "--grpc-port", free_port(), "--rest-port", free_port(), check=False)
        assert proc.returncode != 0 and "choose another --name" in proc.stderr
        assert len(tfdeploy.servers("taken")) == 1
    finally:
        run_cli("stop", "taken", check=False)
