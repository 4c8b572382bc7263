"""The real browser of the ui tests: Debian's headless Chromium driven by Playwright
(Playwright's own browser download does not work offline), the ``tfdeploy ui`` process
as a user starts it, and reading back what the page shows.  The ``browser`` and ``page``
fixtures are in conftest.py."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import ROOT
from PIL import Image

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
#: generous: two cores shared with other work, and a model's first request warms it up
WAIT_MS = 180_000


def start_ui(*args: str) -> tuple[subprocess.Popen, str]:
    """``tfdeploy ui ARGS --port 0`` as a user runs it; (process, the URL it printed)."""
    proc = subprocess.Popen([sys.executable, "-m", "tfdeploy", "ui", *args, "--port", "0"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    line = proc.stdout.readline()
    found = re.search(r"http://127\.0\.0\.1:\d+/", line)
    if not found:
        proc.kill()
        raise AssertionError(f"tfdeploy ui printed no URL: {line}{proc.stdout.read()}")
    return proc, found.group(0)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def open_page(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("#select option", state="attached")


def shot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def wait_results(page, n: int, selector: str = ".result.done") -> None:
    page.wait_for_function(
        "([sel, n]) => document.querySelectorAll('.result:not(.pending)').length == n"
        " && document.querySelectorAll(sel).length == n", arg=[selector, n])


def pixels(page, img) -> np.ndarray:
    """An <img>'s pixels as the page decoded them (RGBA, its natural size), read back
    through a canvas as a lossless PNG."""
    url = img.evaluate("""(img) => {
        const c = document.createElement('canvas');
        c.width = img.naturalWidth; c.height = img.naturalHeight;
        c.getContext('2d').drawImage(img, 0, 0);
        return c.toDataURL('image/png'); }""")
    raw = base64.b64decode(url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(raw)).convert("RGBA"))
