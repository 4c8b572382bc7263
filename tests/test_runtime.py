"""`tfdeploy serve/status/logs/stop` with the embedded runtime (works on any machine)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time

import psutil
import pytest
from conftest import ROOT, run_cli
from PIL import Image
from servers import free_port

from tfdeploy.runtime import state

EXAMPLE = sorted((ROOT / "examples").glob("*.jpg"))[0]


def _pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def ports():
    return free_port(), free_port()


def test_embedded_lifecycle(demo_base, tmp_path, ports):
    grpc_port, rest_port = ports
    base = tmp_path / "deeplab"
    shutil.copytree(demo_base / "1", base / "1")
    out = json.loads(run_cli("serve", str(base), "--runtime", "embedded", "--grpc-port",
                             grpc_port, "--rest-port", rest_port, "--poll-seconds", "0.5",
                             "--json").stdout)
    pid = out["pid"]
    try:
        assert out["runtime"] == "embedded" and out["versions"] == {"1": "AVAILABLE"}
        assert out["grpc"] == f"127.0.0.1:{grpc_port}"
        listed = json.loads(run_cli("status", "--json").stdout)
        assert [s["name"] for s in listed] == ["deeplab"] and listed[0]["running"]
        text = run_cli("status").stdout
        assert "deeplab: running, embedded" in text and "v1 AVAILABLE" in text
        # predict finds the server through the state file, no --server needed
        masks = tmp_path / "masks"
        run_cli("predict", str(EXAMPLE), "-o", str(masks))
        assert Image.open(masks / f"{EXAMPLE.stem}.png").mode == "P"
        # a new export is picked up by the running server
        run_cli("export", "-o", str(base), "--no-verify")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            versions = json.loads(run_cli("status", "--json").stdout)[0]["versions"]
            if versions.get("2") == "AVAILABLE":
                break
            time.sleep(0.5)
        assert versions == {"2": "AVAILABLE", "1": "END"}
        assert "AVAILABLE" in run_cli("logs", "--tail", "50").stdout
        # the same name twice is refused while it runs
        again = run_cli("serve", str(base), "--runtime", "embedded", "--grpc-port",
                        free_port(), "--rest-port", free_port(), check=False)
        assert again.returncode == 2 and "already running" in again.stderr
    finally:
        stopped = run_cli("stop", "--all")
    assert "stopped deeplab" in stopped.stdout
    assert not _pid_alive(pid)
    assert state.load_all() == {}
    assert "no servers" in run_cli("status").stdout


def test_port_in_use_and_bad_paths(demo_base, tmp_path, ports):
    grpc_port, rest_port = ports
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", grpc_port))
        busy.listen()
        proc = run_cli("serve", str(demo_base), "--runtime", "embedded", "--grpc-port",
                       grpc_port, "--rest-port", rest_port, check=False)
    assert proc.returncode == 2 and f"port {grpc_port}" in proc.stderr
    proc = run_cli("serve", str(tmp_path / "nothing"), "--runtime", "embedded", check=False)
    assert proc.returncode == 2 and "tfdeploy export" in proc.stderr
    proc = run_cli("serve", str(demo_base), "--runtime", "embedded", "--gpu", check=False)
    assert proc.returncode == 2 and "--gpu" in proc.stderr
    proc = run_cli("stop", "ghost", check=False)
    assert proc.returncode == 2 and "no server named 'ghost'" in proc.stderr
    assert state.load_all() == {}


def test_model_that_never_loads_times_out_with_log(tmp_path, ports):
    grpc_port, rest_port = ports
    base = tmp_path / "broken"
    (base / "1" / "variables").mkdir(parents=True)
    (base / "1" / "saved_model.pb").write_bytes(b"this is not a SavedModel")
    (base / "1" / "variables" / "variables.index").write_bytes(b"")
    proc = run_cli("serve", str(base), "--runtime", "embedded", "--grpc-port", grpc_port,
                   "--rest-port", rest_port, "--timeout", "40", check=False)
    assert proc.returncode == 2
    assert "could not load any version" in proc.stderr
    assert "last log lines" in proc.stderr and "failed to load" in proc.stderr
    assert state.load_all() == {}
    with socket.socket() as s:  # the failed server is gone: its port is free again
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", grpc_port))


def test_native_runtime_runs_tensorflow_model_server_from_path(demo_base, tmp_path, ports):
    """The native runtime with a `tensorflow_model_server` on PATH.  The official binary
    cannot be installed here, so PATH holds our flag-compatible server under that name."""
    import sys

    grpc_port, rest_port = ports
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "tensorflow_model_server"
    shim.write_text(f"#!/bin/bash\nexec {sys.executable} -m tfdeploy.serving \"$@\"\n")
    shim.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    proc = run_cli("serve", str(demo_base), "--runtime", "native", "--grpc-port",
                   grpc_port, "--rest-port", rest_port, "--json", env=env)
    out = json.loads(proc.stdout)
    try:
        assert out["runtime"] == "native" and out["versions"] == {"1": "AVAILABLE"}
        # the official binary listens on all interfaces: said, and recorded as such
        assert "listens on all interfaces" in proc.stderr and out["host"] == "0.0.0.0"
        assert out["command"][0] == str(shim)
        assert f"--model_base_path={demo_base}" in out["command"]
        assert not any(c.startswith("--grpc_host") for c in out["command"])  # not a real flag
        listed = json.loads(run_cli("status", "--json", env=env).stdout)
        assert listed[0]["runtime"] == "native" and listed[0]["running"]
    finally:
        run_cli("stop", "--all", env=env)
    assert not _pid_alive(out["pid"])


def test_foreground_serve_stops_on_ctrl_c(demo_base, ports):
    import signal
    import subprocess
    import sys

    from servers import http

    grpc_port, rest_port = ports
    proc = subprocess.Popen([sys.executable, "-m", "tfdeploy", "serve", str(demo_base),
                             "--runtime", "embedded", "--foreground", "--grpc-port",
                             str(grpc_port), "--rest-port", str(rest_port)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                code, body = http("GET", f"http://127.0.0.1:{rest_port}/v1/models/deeplab",
                                  timeout=2)
                if code == 200 and body["model_version_status"][0]["state"] == "AVAILABLE":
                    break
            except OSError:
                time.sleep(0.2)
        else:
            raise AssertionError("foreground server never became AVAILABLE")
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    assert "draining" in output and "stopped" in output
    assert state.load_all() == {}  # foreground servers are not recorded


def test_two_servers_name_selection_free_ports_and_dead_records(demo_base, tmp_path):
    """`predict --name`; without it the only live server or an error listing the live
    ones; a server that died is never chosen; port 0 = free ports; every model a config
    file serves is listed; flags after -- reach the server."""
    other = tmp_path / "other"
    shutil.copytree(demo_base / "1", other / "3")
    config = tmp_path / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "deeplab" base_path: '
                      f'"{demo_base}" }} config {{ name: "other" base_path: "{other}" }} }}')
    a = json.loads(run_cli("serve", str(demo_base), "--runtime", "embedded", "--name", "a",
                           "--grpc-port", "0", "--rest-port", "0", "--json", "--",
                           "--max_num_load_retries=2").stdout)
    b = json.loads(run_cli("serve", "--model-config-file", str(config), "--runtime",
                           "embedded", "--name", "b", "--grpc-port", "0", "--rest-port", "0",
                           "--json").stdout)
    try:
        assert 0 not in (a["grpc_port"], a["rest_port"], b["grpc_port"], b["rest_port"])
        assert "--max_num_load_retries=2" in a["command"]
        listed = {s["name"]: s for s in json.loads(run_cli("status", "--json").stdout)}
        assert listed["b"]["model_versions"] == {"deeplab": {"1": "AVAILABLE"},
                                                 "other": {"3": "AVAILABLE"}}
        assert "model other: v3 AVAILABLE" in run_cli("status").stdout
        assert listed["a"]["grpc"] == f"127.0.0.1:{a['grpc_port']}"
        masks = tmp_path / "masks"
        proc = run_cli("predict", str(EXAMPLE), "-o", str(masks), check=False)
        assert proc.returncode == 2
        assert "several servers are running" in proc.stderr and "--name" in proc.stderr
        assert "a (gRPC" in proc.stderr and "b (gRPC" in proc.stderr
        report = json.loads(run_cli("predict", str(EXAMPLE), "--name", "a", "-o",
                                    str(masks), "--json").stdout)
        assert list(report["summary"]["endpoints"]) == [listed["a"]["grpc"]]
        # a dies behind our back: status says so, and predict never aims at it
        psutil.Process(a["pid"]).kill()
        deadline = time.monotonic() + 30
        while _pid_alive(a["pid"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "a: NOT RUNNING" in run_cli("status").stdout
        # b serves two models: which one is asked for (guessing is an error)
        proc = run_cli("predict", str(EXAMPLE), "-o", str(masks), check=False)
        assert proc.returncode == 2 and "several models (deeplab, other)" in proc.stderr
        report = json.loads(run_cli("predict", str(EXAMPLE), "-o", str(masks), "--model",
                                    "deeplab", "--json").stdout)
        assert list(report["summary"]["endpoints"]) == [listed["b"]["grpc"]]
        proc = run_cli("predict", str(EXAMPLE), "--name", "a", check=False)
        assert proc.returncode == 2 and "'a' is not running" in proc.stderr
    finally:
        run_cli("stop", "--all")
    assert state.load_all() == {}


def test_serve_refuses_options_that_would_reach_nothing(demo_base, tmp_path):
    """Every mistake here is found before a server starts: exit 2, one line."""
    cases = [
        (["--runtime", "embedded", "--cpus", "1"], "only the docker runtime takes --cpus"),
        (["--runtime", "embedded", "--restart", "always"], "--restart"),
        (["--runtime", "embedded", "-v", f"{tmp_path}:/data"], "--volume"),
        (["--runtime", "embedded", "--", "--xla_cpu_compilation_enabled=true"],
         "does not implement --xla_cpu_compilation_enabled=true"),
        (["--", "--no_such_flag=1"], "not a tensorflow_model_server flag"),
        (["--", "--port=9000"], "use --grpc-port"),
        (["--", "positional"], "look like --name=value"),
        (["--memory", "lots"], "not a size"),
        (["-e", "NOEQUALS"], "KEY=VALUE"),
    ]
    for args, message in cases:
        proc = run_cli("serve", str(demo_base), *args, check=False)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
    assert state.load_all() == {}


def test_serve_spec_units(demo_base, tmp_path):
    from tfdeploy.errors import UserError
    from tfdeploy.runtime.base import ServeSpec, check_server_flags, parse_volume

    batching = tmp_path / "batching.config"
    batching.write_text("max_batch_size { value: 4 }")
    spec = ServeSpec(base_path=demo_base, batching_parameters_file=batching)
    assert spec.enable_batching  # a parameters file turns batching on
    assert f"--batching_parameters_file={batching}" in spec.server_flags()
    flags = ["--rest_api_timeout_in_ms", "5000", "--enable_model_warmup=false"]
    check_server_flags(flags)
    assert flags == ["--rest_api_timeout_in_ms=5000", "--enable_model_warmup=false"]
    free = ServeSpec(base_path=demo_base, grpc_port=0, rest_port=0)
    free.resolve_ports()
    assert free.grpc_port > 0 and free.rest_port > 0 and free.grpc_port != free.rest_port
    assert parse_volume(f"{tmp_path}:/data:ro") == (str(tmp_path), "/data", True)
    assert parse_volume(f"{tmp_path}:/data") == (str(tmp_path), "/data", True)  # read-only
    assert parse_volume(f"{tmp_path}:/data:rw") == (str(tmp_path), "/data", False)
    with pytest.raises(UserError, match="no such path"):
        parse_volume(f"{tmp_path}/nope:/data")
    assert ServeSpec(base_path=demo_base).model_names() == ["deeplab"]
    ours = ServeSpec(base_path=demo_base, extra_flags=["--max_request_bytes=1000"])
    ours.check_runtime("embedded", "embedded")  # tfdeploy-model-server's own flag
    with pytest.raises(UserError, match="only tfdeploy-model-server"):
        ours.check_runtime("native", "native")


def test_process_identity_survives_pid_reuse():
    """A record is alive only while its pid is the process we started (same creation
    time, read by psutil on Linux and macOS)."""
    from tfdeploy.runtime.process import EmbeddedRuntime, process_start, same_start
    from tfdeploy.runtime.state import ServerRecord

    me = os.getpid()
    started = process_start(me)
    assert started is not None and abs(started - psutil.Process(me).create_time()) < 1e-6
    record = ServerRecord(name="x", runtime="embedded", model_name="m", base_path="",
                          host="127.0.0.1", grpc_port=1, rest_port=2, pid=me,
                          pid_start=started)
    runtime = EmbeddedRuntime()
    assert runtime.alive(record)
    record.pid_start = started - 100  # same pid, another process's start time
    assert not runtime.alive(record)
    assert not same_start(None, started)  # no start time recorded: never provably ours
    if os.path.exists(f"/proc/{me}/stat"):  # records of older versions held clock ticks
        ticks = int(open(f"/proc/{me}/stat").read().rsplit(")", 1)[1].split()[19])
        assert same_start(ticks, started) and not same_start(ticks + 500, started)
    gone = psutil.Popen(["true"])
    gone.wait()
    record.pid, record.pid_start = gone.pid, None
    assert not runtime.alive(record) and process_start(gone.pid) is None
