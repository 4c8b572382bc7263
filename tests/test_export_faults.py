"""Export under I/O faults: a truncated checkpoint, an output path that cannot be
created, a disk that fills up.  Each ends in one line on stderr, a non-zero exit, and
nothing half-written left where a server would look."""

from __future__ import annotations

import shutil
import subprocess
import sys

from conftest import ROOT, run_cli

from tfdeploy.demo import DEMO_CHECKPOINT


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("  ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_truncated_checkpoint_data(tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(DEMO_CHECKPOINT, ckpt)
    data = next(ckpt.glob("*.data-*"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 3])
    proc = run_cli("export", ckpt, "-o", tmp_path / "out", check=False)
    assert proc.returncode == 2
    assert "truncated or corrupt" in one_line_error(proc)
    assert not (tmp_path / "out").exists()


def test_output_that_cannot_be_created(tmp_path):
    (tmp_path / "a-file").write_text("x")
    proc = run_cli("export", "-o", tmp_path / "a-file" / "models", check=False)
    assert proc.returncode == 2
    line = one_line_error(proc)
    assert "--output" in line and "Not a directory" in line


def test_disk_full_while_writing(tmp_path):
    """A file-size limit makes every write past 500 kB fail as a full disk does (EFBIG
    instead of ENOSPC): the export stops with one line and publishes nothing."""
    base = tmp_path / "out"
    code = ("import resource, signal, sys\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (500_000, 500_000))\n"
            "from tfdeploy.cli import main\n"
            "sys.argv = ['tfdeploy', 'export', '-o', sys.argv[1]]\n"
            "main()\n")
    proc = subprocess.run([sys.executable, "-c", code, str(base)], capture_output=True,
                          text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 1
    line = one_line_error(proc)
    assert "cannot write the export" in line and "File too large" in line
    assert "nothing was published" in line
    assert list(base.iterdir()) == []  # no version, no temporary directory left
