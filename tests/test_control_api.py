"""The control API kept to those who should have it (issue 24): reloads served on a
separate local port or the UNIX socket only (``--model_service_port``), and only naming
base paths under ``--allowed_model_roots``.  A real server, real gRPC over loopback and
over a UNIX socket."""

from __future__ import annotations

import grpc
import pytest
from servers import ServerProcess, free_port

from tfdeploy.tfs import protos


def _stubs(target: str):
    ms_grpc = protos.module("tensorflow_serving.apis.model_service_pb2_grpc")
    channel = grpc.insecure_channel(target)
    return channel, ms_grpc.ModelServiceStub(channel)


def _reload(stub, name: str, base: str):
    mm_pb2 = protos.module("tensorflow_serving.apis.model_management_pb2")
    request = mm_pb2.ReloadConfigRequest()
    config = request.config.model_config_list.config.add()
    config.name, config.base_path = name, base
    return stub.HandleReloadConfigRequest(request, timeout=60)


def _status(stub, name: str = "deeplab"):
    status_pb2 = protos.module("tensorflow_serving.apis.get_model_status_pb2")
    request = status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    return stub.GetModelStatus(request, timeout=10)


@pytest.fixture
def server(demo_base, tmp_path):
    socket_path = tmp_path / "ms.sock"
    control = free_port()
    srv = ServerProcess("--model_name=deeplab", f"--model_base_path={demo_base}",
                        f"--model_service_port={control}", f"--grpc_socket_path={socket_path}",
                        f"--allowed_model_roots={demo_base.parent}", log_dir=tmp_path)
    try:
        srv.wait_available()
        yield srv, control, socket_path
    finally:
        srv.stop()


def test_reloads_only_on_the_model_service_port_or_socket(server, demo_base, tmp_path):
    srv, control, socket_path = server
    public, stub = _stubs(srv.grpc_target)
    with public:
        assert _status(stub).model_version_status  # status stays on every address
        with pytest.raises(grpc.RpcError) as err:
            _reload(stub, "deeplab", "/")  # one call left the model NOT_FOUND before
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert f"127.0.0.1:{control}" in err.value.details()
        assert "AVAILABLE" in srv.status().values()
    for target in (f"127.0.0.1:{control}", f"unix:{socket_path}"):
        channel, local = _stubs(target)
        with channel:
            _reload(local, "deeplab", str(demo_base))
            assert _status(local).model_version_status[0].state == 30  # AVAILABLE


def test_reloads_name_base_paths_under_allowed_roots_only(server, demo_base, tmp_path):
    srv, control, _ = server
    channel, stub = _stubs(f"127.0.0.1:{control}")
    outside = tmp_path / "outside"
    (outside / "1").mkdir(parents=True)
    escape = demo_base.parent / "escape"
    escape.symlink_to(outside)  # a symlink under the root does not lead out of it
    try:
        with channel:
            for base in (str(outside), "/etc", str(escape)):
                with pytest.raises(grpc.RpcError) as err:
                    _reload(stub, "deeplab", base)
                assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, base
                assert "--allowed_model_roots" in err.value.details()
            assert "AVAILABLE" in srv.status().values()  # the config in force serves on
    finally:
        escape.unlink()


def test_tfdeploy_serve_keeps_reloads_on_a_private_socket(demo_base, tmp_path):
    """`tfdeploy serve` (embedded) serves Predict where --host says and reloads only on a
    UNIX socket in the 0700 state directory."""
    import json

    from conftest import run_cli

    state_dir = tmp_path / "state"
    env = {"TFDEPLOY_STATE_DIR": str(state_dir)}
    out = json.loads(run_cli("serve", demo_base, "--runtime", "embedded", "--grpc-port",
                             "0", "--rest-port", "0", "--json", env=env).stdout)
    try:
        sock = state_dir / "sockets" / "deeplab.sock"
        assert f"--grpc_socket_path={sock}" in out["command"]
        assert "--model_service_port=-1" in out["command"]
        public, stub = _stubs(out["grpc"])
        with public:
            assert _status(stub).model_version_status
            with pytest.raises(grpc.RpcError) as err:
                _reload(stub, "deeplab", str(demo_base))
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        channel, local = _stubs(f"unix:{sock}")
        with channel:
            _reload(local, "deeplab", str(demo_base))
    finally:
        run_cli("stop", "--all", env=env)
