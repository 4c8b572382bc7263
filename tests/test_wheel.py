"""After a plain (non-editable) ``pip install``, the commands work with their defaults
from any directory: the demo checkpoint and images ship inside the package.

How it stays fast: the wheel is built from this checkout and installed with ``--no-deps``
into a fresh venv whose only link to ``.venv`` is a ``.pth`` line naming .venv's
site-packages, so TensorFlow & co. are found there without reinstalling them.  A plain
path in a ``.pth`` file does not process the ``.pth`` files inside it, so .venv's
editable install of this checkout stays out of sight: what runs is the installed wheel
(checked through ``tfdeploy.__file__``), from a temporary directory that has no source.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import ROOT


def _run(cmd: list, cwd: Path, env: dict, timeout: float = 600) -> str:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # a clean copy: the checkout's egg-info and caches stay out of it
    shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".venv*", ".git", ".cache", "models", "masks", "deploy", "*.egg-info", "__pycache__",
        ".pytest_cache", ".ruff_cache"))
    dist = tmp / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
          "-w", dist, src], tmp, dict(os.environ))
    (wheel,) = dist.glob("tfdeploy-*.whl")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp, dict(os.environ))
    py = venv / "bin" / "python"
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     tmp, dict(os.environ)).strip())
    (site / "dot_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}",
           "TFDEPLOY_STATE_DIR": str(tmp / "state"), "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)
    _run([sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-deps", wheel],
         tmp, env)
    return venv, env


def test_installed_wheel_runs_export_serve_predict_bench(installed, tmp_path):
    venv, env = installed
    work = tmp_path / "anywhere"
    work.mkdir()
    where = _run([venv / "bin" / "python", "-c", "import tfdeploy; print(tfdeploy.__file__)"],
                 work, env).strip()
    assert where.startswith(str(venv)) and not where.startswith(str(ROOT)), where
    tfd = venv / "bin" / "tfdeploy"
    out = json.loads(_run([tfd, "export", "--json", "--no-verify"], work, env))
    assert out["version"] == 1 and (work / "models" / "deeplab" / "1").is_dir()
    assert "tfdeploy/demo/checkpoint" in out["checkpoint"] and str(venv) in out["checkpoint"]
    served = json.loads(_run([tfd, "serve", "--runtime", "embedded", "--grpc-port", "0",
                              "--rest-port", "0", "--json"], work, env))
    try:
        assert served["command"][0] == str(venv / "bin" / "python")
        image = next(Path(where).parent.glob("demo/images/*.jpg"))
        shutil.copy(image, work / "photo.jpg")
        _run([tfd, "predict", "photo.jpg"], work, env)
        assert (work / "masks" / "photo.png").is_file()
        report = json.loads(_run([tfd, "bench", "-c", "1", "-n", "3", "--json"], work, env))
        assert report["images"] >= 4 and report["levels"][0]["errors"] == 0
    finally:
        _run([tfd, "stop", "--all"], work, env)


def test_installed_wheel_serves_the_ui_page(installed, tmp_path):
    """The page is package data: an installed wheel serves it (no model server needed)."""
    import re
    import urllib.request

    venv, env = installed
    proc = subprocess.Popen([venv / "bin" / "tfdeploy", "ui", "--server", "127.0.0.1:9",
                             "--port", "0"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert url, line + proc.stdout.read()
        for path, needle in (("", b'id="images"'), ("static/app.js", b"/api/predict"),
                             ("static/style.css", b".result")):
            with urllib.request.urlopen(url.group(0) + path, timeout=30) as resp:
                assert resp.status == 200 and needle in resp.read(), path
    finally:
        proc.terminate()
        proc.wait(30)
