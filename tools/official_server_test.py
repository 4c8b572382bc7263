"""Run TensorFlow Serving's own integration test against tfdeploy-model-server.

    .venv/bin/python tools/official_server_test.py --tfs-repo PATH [-k NAME ...] [--all]

PATH is a tensorflow/serving checkout or a bare clone of it.  The test
(``tensorflow_serving/model_servers/tensorflow_model_server_test.py``), its base class and
the testdata it reads are copied, unchanged, into a scratch directory laid out as bazel's
runfiles (``$TEST_SRCDIR/tf_serving/tensorflow_serving/...``), where the
``model_servers/tensorflow_model_server`` binary the test starts is a two-line script
exec'ing ``tfdeploy-model-server``.  Only plumbing differs from a bazel run: the test's
``tensorflow_serving.model_servers`` package is found beside the pip-installed
``tensorflow_serving.apis``, ``portpicker`` (which the test imports to choose server
ports) is replaced by a picker of free ports in ``--ports``, and the test process uses
Keras 2 (``tf_keras``) for ``tf.keras`` when it is installed, as the test's Keras models
assume.  The assertions are the official ones.

Tests that need what issue 11 puts out of scope (a GPU or TPU, TF-Text ops, the profiler
service) are skipped with that reason unless ``--all``.  Prints one line per test and
exits 1 if any test that ran failed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import types
import unittest
from pathlib import Path

TEST = "tensorflow_serving/model_servers/tensorflow_model_server_test.py"
BASE = "tensorflow_serving/model_servers/test_util/tensorflow_model_server_test_base.py"
TESTDATA = "tensorflow_serving/servables/tensorflow/testdata"
BINARY = "tensorflow_serving/model_servers/tensorflow_model_server"
TEST_CLASS = "TensorflowModelServerTest"

# Out of scope for tfdeploy-model-server (issue 11): name -> why it is skipped.
OUT_OF_SCOPE = {
    "test_tf_text": "needs TF-Text ops (tensorflow-text) in the server",
    "test_profiler_service_with_valid_trace_request": "needs the profiler service",
}
HARDWARE_WORDS = ("gpu", "tpu")


def out_of_scope_reason(test_name: str) -> str | None:
    if test_name in OUT_OF_SCOPE:
        return OUT_OF_SCOPE[test_name]
    if any(word in test_name.lower() for word in HARDWARE_WORDS):
        return "needs a GPU or TPU"
    return None


# -- export ------------------------------------------------------------------------------
def _git(repo: Path, *args: str, data: bytes | None = None) -> bytes:
    return subprocess.run(["git", "--git-dir", str(repo), *args], input=data,
                          capture_output=True, check=True).stdout


def _git_dir(repo: Path) -> Path:
    out = subprocess.run(["git", "-C", str(repo), "rev-parse", "--absolute-git-dir"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{repo}: neither a tensorflow/serving checkout nor a git repository")
    return Path(out.stdout.strip())


def export_sources(repo: Path, runfiles: Path) -> list[str]:
    """Copy the test, its base and the testdata under ``runfiles``; returns the paths the
    repository lists but cannot give (large blobs left out of a partial or shallow copy).

    A checkout's working tree is copied as it is; a bare clone is read at HEAD."""
    missing: list[str] = []
    if (repo / TEST).is_file():  # a working tree
        for rel in (TEST, BASE):
            (runfiles / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo / rel, runfiles / rel)
        shutil.copytree(repo / TESTDATA, runfiles / TESTDATA, dirs_exist_ok=True)
        return missing
    git_dir = _git_dir(repo)
    listing = _git(git_dir, "ls-tree", "-r", "-z", "HEAD", "--", TEST, BASE, TESTDATA)
    entries = []
    for line in listing.decode().split("\0"):
        if line:
            meta, rel = line.split("\t", 1)
            mode, kind, sha = meta.split()
            if kind == "blob":
                entries.append((mode, sha, rel))
    if not any(rel == TEST for _, _, rel in entries):
        raise SystemExit(f"{repo}: no {TEST} at HEAD")
    # One `cat-file --batch` for all blobs: a missing object answers "<sha> missing".
    shas = "".join(f"{sha}\n" for _, sha, _ in entries).encode()
    out = _git(git_dir, "cat-file", "--batch", data=shas)
    at = 0
    for mode, _sha, rel in entries:
        end = out.index(b"\n", at)
        header = out[at:end].split()
        at = end + 1
        if header[-1] == b"missing":
            missing.append(rel)
            continue
        size = int(header[2])
        target = runfiles / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(out[at:at + size])
        if mode == "100755":
            target.chmod(0o755)
        at += size + 1
    return missing


def write_binary(runfiles: Path, server: str) -> None:
    """The ``tensorflow_model_server`` the test starts: our server, same arguments."""
    path = runfiles / BINARY
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\nexec {server} "$@"\n')
    path.chmod(0o755)


# -- the test process --------------------------------------------------------------------
def _port_picker(first: int, last: int) -> types.ModuleType:
    """A ``portpicker`` module whose ports come from [first, last], each handed out once."""
    module = types.ModuleType("portpicker")
    handed: set[int] = set()

    def pick_unused_port() -> int:
        for port in range(first, last + 1):
            if port in handed:
                continue
            with socket.socket() as s:
                try:
                    s.bind(("", port))
                except OSError:
                    continue
            handed.add(port)
            return port
        raise RuntimeError(f"no free port in {first}-{last}")

    module.pick_unused_port = pick_unused_port  # type: ignore[attr-defined]
    return module


class _Recorder(unittest.TextTestResult):
    """Keeps each test's outcome for the summary the parent prints."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.outcomes: dict[str, dict[str, str]] = {}

    def _put(self, test, outcome: str, detail: str = "") -> None:
        self.outcomes[test.id().rsplit(".", 1)[-1]] = {"outcome": outcome, "detail": detail}

    def addSuccess(self, test):  # noqa: N802 (unittest's names)
        super().addSuccess(test)
        self._put(test, "passed")

    def addFailure(self, test, err):  # noqa: N802
        super().addFailure(test, err)
        self._put(test, "failed", self.failures[-1][1])

    def addError(self, test, err):  # noqa: N802
        super().addError(test, err)
        self._put(test, "failed", self.errors[-1][1])

    def addSkip(self, test, reason):  # noqa: N802
        super().addSkip(test, reason)
        self._put(test, "skipped", reason)


def run_tests(work: Path, names: list[str], run_all: bool, ports: tuple[int, int]) -> int:
    """In the child process: import the official test as the bazel run would see it, run
    the selected tests, write ``results.json`` in ``work``."""
    runfiles = work / "runfiles" / "tf_serving"
    os.environ["TEST_SRCDIR"] = str(work / "runfiles")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.modules["portpicker"] = _port_picker(*ports)

    import tensorflow.compat.v1 as tf
    import tensorflow_serving

    # The pip package has the APIs; the test's own package comes from the export.
    tensorflow_serving.__path__.append(str(runfiles / "tensorflow_serving"))
    from absl import flags

    tmp = work / "tmp"
    tmp.mkdir(exist_ok=True)
    flags.FLAGS([sys.argv[0], f"--test_tmpdir={tmp}"])
    spec = importlib.util.spec_from_file_location("tensorflow_model_server_test",
                                                  runfiles / TEST)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cls = getattr(module, TEST_CLASS)
    if not run_all:
        for name in unittest.TestLoader().getTestCaseNames(cls):
            reason = out_of_scope_reason(name)
            if reason:
                setattr(cls, name, unittest.skip(f"out of scope: {reason}")(getattr(cls, name)))
    tf.enable_eager_execution()  # as the test's own __main__ does
    # The official order (alphabetical) even for a selection: tests depend on it, e.g.
    # the distribute test configures virtual CPUs, which must precede TF's first use.
    order = unittest.TestLoader().getTestCaseNames(cls)
    unknown = sorted(set(names) - set(order))
    if unknown:
        raise SystemExit(f"no such test: {', '.join(unknown)}")
    suite = unittest.TestSuite(cls(n) for n in order if not names or n in names)
    runner = unittest.TextTestRunner(stream=sys.stdout, verbosity=2, resultclass=_Recorder)
    result = runner.run(suite)
    (work / "results.json").write_text(json.dumps(result.outcomes, indent=1))
    return 0 if result.wasSuccessful() else 1


# -- the driver --------------------------------------------------------------------------
def failure_summary(traceback_text: str) -> str:
    """The exception line of a traceback, with a gRPC error's status and details."""
    lines = traceback_text.strip().splitlines()
    frames = [i for i, line in enumerate(lines) if line.startswith("  File ")]
    rest = lines[frames[-1] + 1:] if frames else lines
    head = next((line for line in rest if line and not line[0].isspace()), lines[-1])
    grpc_parts = [line.strip() for line in rest
                  if line.strip().startswith(("status = ", "details = "))]
    return " ".join([head.split(" <_InactiveRpcError")[0], *grpc_parts])[:300]


def default_server() -> str:
    return str(Path(sys.executable).with_name("tfdeploy-model-server"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tfs-repo", type=Path, help="tensorflow/serving checkout or bare clone")
    p.add_argument("--server", default=default_server(),
                   help="command started in place of tensorflow_model_server "
                        "(default: tfdeploy-model-server beside this Python)")
    p.add_argument("-k", "--test", action="append", default=[],
                   help="run only this test method (repeatable)")
    p.add_argument("--all", action="store_true",
                   help="also run GPU/TPU, TF-Text and profiler-service tests")
    p.add_argument("--ports", default="19000-19999",
                   help="range the test's servers take their ports from")
    p.add_argument("--workdir", type=Path,
                   help="scratch directory (default: a new temporary one, removed after)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    first, last = (int(x) for x in args.ports.split("-"))
    if args.child:
        return run_tests(args.workdir, args.test, args.all, (first, last))
    if args.tfs_repo is None:
        p.error("--tfs-repo is required")

    work = args.workdir or Path(tempfile.mkdtemp(prefix="tfs-official-"))
    work.mkdir(parents=True, exist_ok=True)
    runfiles = work / "runfiles" / "tf_serving"
    missing = export_sources(args.tfs_repo.resolve(), runfiles)
    write_binary(runfiles, args.server)
    print(f"official test exported to {work}; server: {args.server}")
    for rel in missing:
        print(f"not in the repository copy (large blob left out): {rel}")

    # The test's servers inherit the child's process group, so whatever it leaves
    # running (a test killed half-way) ends with it.
    command = [sys.executable, os.path.abspath(__file__), "--child", "--workdir", str(work),
               "--ports", args.ports, *(f"--test={t}" for t in args.test)]
    if args.all:
        command.append("--all")
    env = dict(os.environ)
    if importlib.util.find_spec("tf_keras") is not None:
        # The test builds its Keras models with tf.keras and sends them input "x": Keras 2
        # names the signature's input after the Input layer, Keras 3 (tf.keras of
        # TensorFlow >= 2.16 by default) calls it "inputs", which no server would accept.
        # So the test process uses Keras 2, as the test was written for.
        env["TF_USE_LEGACY_KERAS"] = "1"
    else:
        print("tf_keras is not installed: the Keras tests will build Keras 3 models, whose "
              "signature input is not the test's 'x'")
    # testPredictUDS's server listens on this fixed path and is SIGKILLed, so the socket
    # file outlives it; remove it unless it was there before we started.
    socket_file = Path("/tmp/tf-serving.sock")
    socket_was_there = socket_file.exists()
    child = subprocess.Popen(command, start_new_session=True, env=env)
    try:
        child.wait()
    finally:
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if not socket_was_there:
            socket_file.unlink(missing_ok=True)

    results_file = work / "results.json"
    if not results_file.is_file():
        print(f"the test process ended ({child.returncode}) without results")
        return 1
    results = json.loads(results_file.read_text())
    print("\n== tensorflow_model_server_test.py against tfdeploy-model-server ==")
    counts: dict[str, int] = {}
    for name in sorted(results):
        outcome, detail = results[name]["outcome"], results[name]["detail"]
        counts[outcome] = counts.get(outcome, 0) + 1
        line = f"{outcome.upper():8} {name}"
        if outcome == "skipped":
            line += f" ({detail})"
        elif outcome == "failed":
            line += " -- " + failure_summary(detail)
        print(line)
    print(", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    if args.workdir is None and not counts.get("failed"):
        shutil.rmtree(work, ignore_errors=True)
    return 1 if counts.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
