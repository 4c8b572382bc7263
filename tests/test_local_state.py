"""The per-user state (issue 24): a private directory, private files, records checked
before they steer a signal, a log read or a container removal, and server names that
cannot become paths.  Real CLI processes and a real embedded server."""

from __future__ import annotations

import json
import os
import stat

import pytest
from conftest import run_cli
from servers import free_port


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _write_records(state_dir, records: dict) -> None:
    state_dir.mkdir(mode=0o700, exist_ok=True)
    (state_dir / "servers.json").write_text(json.dumps({"servers": records}))
    os.chmod(state_dir / "servers.json", 0o600)


def _record(name: str, **fields) -> dict:
    return {"name": name, "runtime": "embedded", "model_name": "deeplab", "base_path": "/x",
            "host": "127.0.0.1", "grpc_port": free_port(), "rest_port": free_port(),
            "started_at": 1.0, **fields}


def test_state_directory_and_files_are_private(demo_base, tmp_path):
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o755)  # an older tfdeploy made it world-readable
    os.chmod(state_dir, 0o755)
    env = {"TFDEPLOY_STATE_DIR": str(state_dir)}
    run_cli("serve", demo_base, "--runtime", "embedded", "--name", "private", "--grpc-port",
            "0", "--rest-port", "0", env=env)
    try:
        assert _mode(state_dir) == 0o700
        assert _mode(state_dir / "logs") == 0o700
        for name in ("servers.json", "servers.lock", "logs/private.log"):
            assert _mode(state_dir / name) == 0o600, name
    finally:
        run_cli("stop", "private", env=env)


def test_server_names_cannot_become_paths(demo_base, tmp_path):
    env = {"TFDEPLOY_STATE_DIR": str(tmp_path / "state")}
    for name in ("../escape", "a/b", "-x", "a b", "a:b"):
        proc = run_cli("serve", demo_base, "--runtime", "embedded", "--name", name,
                       "--grpc-port", "0", "--rest-port", "0", check=False, env=env)
        assert proc.returncode == 2, (name, proc.stderr)
        assert "not a valid server name" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "escape.log").exists()
    assert not (tmp_path / "state" / "logs").exists()


def test_records_are_checked_before_use(tmp_path):
    """A record pointing its log at a file outside the state directory, or named like a
    path, is ignored (with a warning), never followed."""
    state_dir = tmp_path / "state"
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET\n")
    _write_records(state_dir, {
        "stolen": _record("stolen", log_file=str(secret)),
        "../up": _record("../up"),
    })
    env = {"TFDEPLOY_STATE_DIR": str(state_dir)}
    proc = run_cli("logs", "stolen", check=False, env=env)
    assert "TOP SECRET" not in proc.stdout + proc.stderr
    assert proc.returncode == 2 and "no server named 'stolen'" in proc.stderr, proc.stderr
    # the warning says why the record was ignored, as one of the CLI's own lines
    assert any(line.startswith("warning: server record 'stolen' ignored") and
               "outside" in line for line in proc.stderr.splitlines()), proc.stderr
    proc = run_cli("status", "--json", env=env)
    assert json.loads(proc.stdout) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")
def test_records_of_another_user_are_refused(tmp_path):
    state_dir = tmp_path / "state"
    _write_records(state_dir, {"x": _record("x")})
    os.chown(state_dir / "servers.json", 65534, 65534)
    proc = run_cli("status", check=False, env={"TFDEPLOY_STATE_DIR": str(state_dir)})
    assert proc.returncode == 2
    assert "belongs to another user" in proc.stderr and "Traceback" not in proc.stderr


def _docker():
    try:
        import docker

        client = docker.from_env(timeout=30)
        client.ping()
        client.images.get("tfdeploy/base:bookworm")
        return client
    except Exception:
        return None


@pytest.mark.skipif(_docker() is None, reason="no docker engine or tfdeploy/base image")
def test_a_record_never_steers_stop_to_a_stranger_container(tmp_path):
    client = _docker()
    stranger = client.containers.create("tfdeploy/base:bookworm", ["true"])
    try:
        state_dir = tmp_path / "state"
        _write_records(state_dir, {"victim": _record("victim", runtime="docker",
                                                     container_id=stranger.id)})
        proc = run_cli("stop", "victim", check=False,
                       env={"TFDEPLOY_STATE_DIR": str(state_dir)})
        assert proc.returncode != 0
        assert "is not the one tfdeploy started" in proc.stderr, proc.stderr
        stranger.reload()  # still there
    finally:
        stranger.remove(force=True)
