"""The Python API: the whole pipeline (export -> serve -> predict -> bench -> stop) from
Python, and ``import tfdeploy`` staying cheap and TensorFlow-free."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT
from PIL import Image

import tfdeploy
from tfdeploy.runtime import state

EXAMPLES = sorted((ROOT / "examples").glob("*.jpg"))


def test_import_is_lazy_and_tensorflow_free():
    code = ("import sys, time\nt = time.perf_counter()\nimport tfdeploy\n"
            "names = list(tfdeploy.__all__)\n"
            "tfdeploy.Client, tfdeploy.serve, tfdeploy.Server, tfdeploy.UserError\n"
            "import tfdeploy.export.inspect as inspect_module\n"
            "assert callable(tfdeploy.export) and tfdeploy.export.inspect is inspect_module\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'tensorflow'))\n"
            "print('tfdeploy.api' in sys.modules, names)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120).stdout.splitlines()
    assert out[0] == "[]"
    assert out[1].startswith("True") and "'export'" in out[1] and "'Client'" in out[1]


def test_public_names_are_documented():
    for name in tfdeploy.__all__:
        obj = getattr(tfdeploy, name)
        assert obj.__doc__ and obj.__doc__.strip(), name


def test_whole_pipeline_from_python(tmp_path):
    """What a user scripts: export the demo, serve it on free ports, predict every input
    kind, sync and async, read metadata and status, bench, stop (context manager)."""
    base = tmp_path / "models" / "deeplab"
    lines: list[str] = []
    result = tfdeploy.export(output=base, verify=False, progress=lines.append)
    assert result.version == 1 and result.path == str(base / "1")
    assert (base / "1" / "saved_model.pb").is_file() and lines
    again = tfdeploy.export(output=base, verify=False)
    assert again.version == 2
    info = tfdeploy.inspect(base)  # what `tfdeploy inspect --json` prints
    assert sorted(info["versions"]) == ["1", "2"]
    assert "serving_default" in info["versions"]["2"]["meta_graphs"][0]["signatures"]

    with tfdeploy.serve(base, runtime="embedded", name="api", grpc_port=0, rest_port=0,
                        timeout=180) as server:
        assert isinstance(server, tfdeploy.Server) and server.running
        assert server.versions == {2: "AVAILABLE"}
        assert server.rest_url.startswith("http://127.0.0.1:")
        assert not server.grpc_address.endswith(":0")
        assert [s["name"] for s in tfdeploy.servers()] == ["api"]
        # the server logs this line once REST is serving, so a request may beat it
        deadline = time.monotonic() + 30
        while not any("Exporting HTTP/REST API at:" in line
                      for line in tfdeploy.logs("api", tail=50)):
            assert time.monotonic() < deadline, tfdeploy.logs("api", tail=50)
            time.sleep(0.1)

        rgb = Image.open(EXAMPLES[0]).convert("RGB")
        inputs = [EXAMPLES[0], str(EXAMPLES[0]), EXAMPLES[0].read_bytes(), rgb,
                  np.asarray(rgb)]
        for transport in ("grpc", "rest"):
            with server.client(transport) as client:
                assert client.signature == "serving_default"
                assert set(client.metadata()) >= {"serving_default", "predict_images"}
                assert client.status() == {2: "AVAILABLE"}
                masks = [client.predict(image) for image in inputs]
                arrays = [np.asarray(m) for m in masks]
                for mask in masks:
                    assert mask.mode == "P" and mask.size == rgb.size
                # the file's bytes are sent as they are (decoded by the model's JPEG
                # decoder); pixels in memory go as PNG of what Pillow decoded: the JPEG
                # decoders differ by a few levels, so the masks agree almost everywhere
                for a in arrays[1:3]:
                    np.testing.assert_array_equal(a, arrays[0])
                np.testing.assert_array_equal(arrays[4], arrays[3])
                assert (arrays[3] == arrays[0]).mean() > 0.99
                assert len(np.unique(np.asarray(masks[0]))) > 1  # shapes were found
                # a grey array and a smaller PIL image come back at their own size
                small = rgb.resize((80, 60))
                assert client.predict(np.asarray(small.convert("L"))).size == (80, 60)
                future = client.predict_async(small)
                assert future.result(timeout=60).size == (80, 60)

                async def both(c=client):
                    return await asyncio.gather(c.apredict(EXAMPLES[1]),
                                                c.apredict(EXAMPLES[2]))

                first, second = asyncio.run(both())
                assert first.size == Image.open(EXAMPLES[1]).size
                assert second.size == Image.open(EXAMPLES[2]).size

        with tfdeploy.Client(server.grpc_address) as client:
            results = client.predict_files([EXAMPLES[0]], output_dir=tmp_path / "masks",
                                           overlay=True)
            assert [r.ok for r in results] == [True]
            assert Image.open(tmp_path / "masks" / f"{EXAMPLES[0].stem}.png").mode == "P"
            with pytest.raises(tfdeploy.BadImage):
                client.predict(b"not an image")
            with pytest.raises(tfdeploy.BadImage):
                client.predict(np.zeros((4, 4, 2), np.uint8))
            levels = tfdeploy.bench(client, EXAMPLES[:2], concurrency=[1, 2], warmup=1,
                                    requests=4)
            assert [lv.concurrency for lv in levels] == [1, 2]
            assert all(lv.requests == 4 and lv.errors == 0 for lv in levels)
        pid = server.record.pid
    assert state.load_all() == {}  # the context manager stopped it and forgot it
    import psutil

    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"


def test_api_errors_are_user_errors(tmp_path):
    with pytest.raises(tfdeploy.UserError, match="tfdeploy export"):
        tfdeploy.serve(tmp_path / "nothing", runtime="embedded")
    with pytest.raises(tfdeploy.UserError) as info:
        tfdeploy.serve(tmp_path, runtime="embedded", cpus=2)
    assert info.value.param == "cpus"
    with tfdeploy.Client("127.0.0.1:1", retries=0, timeout=5) as client:
        with pytest.raises(tfdeploy.BadImage, match="not an image"):
            client.predict(b"x")  # checked before any network call
        with pytest.raises(tfdeploy.PredictError, match=r"Start one with tfdeploy\.serve\(\)"):
            client.predict(EXAMPLES[0])


def test_manifests_from_python(tmp_path):
    """``tfdeploy.manifest`` writes what ``tfdeploy manifest`` does; its errors name the
    Python arguments (the CLI shows the same error with flags)."""
    out = tmp_path / "deploy"
    result = tfdeploy.manifest("k8s", "gs://bucket/deeplab", output_dir=out, replicas=2,
                               node_selector={"pool": "gpu"}, gpu=True)
    [written] = result["files"]
    assert written == str(out / "deeplab-serving.k8s.yaml") and result["image"].endswith("-gpu")
    assert result["next_steps"] == [f"then: kubectl apply -f {written}"]
    with pytest.raises(tfdeploy.UserError) as info:
        tfdeploy.manifest("kserve", "models/deeplab", output_dir=tmp_path / "none")
    assert "give pvc (an existing claim" in str(info.value)
    assert "give --pvc (an existing claim" in info.value.flag_text()
    with pytest.raises(tfdeploy.UserError) as info:
        tfdeploy.manifest("k8s", "gs://b/x", output_dir=tmp_path / "none", grpc_port=9000)
    assert str(info.value).startswith("target k8s cannot honour grpc_port:")
    assert info.value.flag_text().startswith("--target k8s cannot honour --grpc-port:")
    with pytest.raises(tfdeploy.UserError) as info:  # a brace in a value stays a brace
        tfdeploy.manifest("k8s", tmp_path, output_dir=tmp_path / "none", fill_from="x/{y}")
    assert str(info.value) == "fill_from: wants a gs:// or s3:// URI, got 'x/{y}'"
    assert info.value.flag_text() == "--fill-from: wants a gs:// or s3:// URI, got 'x/{y}'"
    with pytest.raises(TypeError, match="unexpected keyword argument 'replica'"):
        tfdeploy.manifest("k8s", "gs://b/x", output_dir=tmp_path / "none", replica=2)
    assert not (tmp_path / "none").exists()
