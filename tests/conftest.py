"""Shared fixtures: run the real CLI in subprocesses, export real SavedModels."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))  # slim_reference, helpers

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Servers started by tests are recorded in a state dir of their own, not the user's.
os.environ["TFDEPLOY_STATE_DIR"] = tempfile.mkdtemp(prefix="tfdeploy-test-state-")


def _onednn_in_this_process() -> None:
    """Tests compute int8 graphs in this process, on TensorFlow's oneDNN kernels, which
    TensorFlow leaves off on CPUs without VNNI, AVX512_BF16 or AMX (tfdeploy/tfs/onednn.py):
    on such a CPU, turn them on here, then unset the variable again, so that the CLI and
    the servers the tests start decide for themselves as they would for a user."""
    from tfdeploy.tfs import onednn

    if onednn.setting() is not None or onednn.on_by_default(onednn.cpu_flags()):
        return
    os.environ[onednn.ENV] = "1"
    from tfdeploy.tfimport import onednn_enabled

    assert onednn_enabled()  # read once, now
    del os.environ[onednn.ENV]


_onednn_in_this_process()


def run_cli(*args: str, check: bool = True, timeout: float = 600,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m tfdeploy ARGS`` as a user would; returns the completed process."""
    proc = subprocess.run(
        [sys.executable, "-m", "tfdeploy", *map(str, args)], capture_output=True, text=True,
        timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"tfdeploy {' '.join(map(str, args))} exited {proc.returncode}:\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def export_json(*args: str) -> dict:
    return json.loads(run_cli("export", *args, "--json").stdout)


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory) -> Path:
    """A native checkpoint of a small random-weight configuration (fast to export)."""
    from tfdeploy.export.checkpoint import write_checkpoint
    from tfdeploy.export.config import ModelConfig
    from tfdeploy.export.model import random_weights

    cfg = ModelConfig(num_classes=5, backbone="small_resnet_v2", units=(1, 1, 1, 1),
                      base_depths=(8, 16, 16, 32), root_depth=8, aspp_depth=16,
                      output_stride=16, multi_grid=(1,))
    path = tmp_path_factory.mktemp("small_ckpt")
    write_checkpoint(path, cfg, random_weights(cfg, seed=3))
    return path


@pytest.fixture(scope="session")
def demo_base(tmp_path_factory) -> Path:
    """The demo checkpoint exported once as version 1 (read-only for tests)."""
    base = tmp_path_factory.mktemp("demo_models") / "deeplab"
    export_json("--output", str(base))
    return base


#: a model config serving every version of model "deeplab" under {base} (labels are
#: added by the tests that move them)
ALL_VERSIONS_CONFIG = """model_config_list {{
  config {{
    name: "deeplab"
    base_path: "{base}"
    model_platform: "tensorflow"
    model_version_policy {{ all {{ }} }}
  }}
}}
"""

#: Real photographs scikit-image ships inside its wheel (no download at run time).
PHOTOGRAPHS = ("astronaut", "coffee", "chelsea", "rocket")


@pytest.fixture(scope="session")
def photographs(tmp_path_factory) -> Path:
    """A directory of real photographs as PNG files, for export verification probes."""
    from PIL import Image
    from skimage import data

    folder = tmp_path_factory.mktemp("photographs")
    for name in PHOTOGRAPHS:
        Image.fromarray(getattr(data, name)()).save(folder / f"{name}.png")
    return folder


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="module")
def demo_server(demo_base, tmp_path_factory):
    """The demo export served by tfdeploy-model-server on free ports, one per test module."""
    from servers import ServerProcess

    srv = ServerProcess("--model_name=deeplab", f"--model_base_path={demo_base}",
                        log_dir=tmp_path_factory.mktemp("logs"))
    srv.wait_available(1)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium (tests/ui_browser.py), one per test module."""
    import ui_browser as browser_module

    if not Path(browser_module.CHROMIUM).exists():
        pytest.skip("no chromium: `apt-get install chromium chromium-driver` (make test "
                    "installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=browser_module.CHROMIUM,
                                      args=browser_module.CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    """A fresh browser context and page with the ui tests' generous timeout."""
    from ui_browser import WAIT_MS

    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    yield page
    context.close()
