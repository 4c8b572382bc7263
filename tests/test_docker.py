"""The docker runtime against a real engine, with the locally built image that honours the
official tensorflow/serving contract (docker/build.sh).  Skipped, with the reason, where no
engine or image is available."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT, run_cli
from PIL import Image
from servers import free_port

from tfdeploy.runtime import state

EMBEDDED_IMAGE = "tfdeploy/serving-embedded:latest"
EXAMPLES = sorted((ROOT / "examples").glob("*.jpg"))


def _engine():
    try:
        import docker

        client = docker.from_env(timeout=30)
        client.ping()
    except Exception as exc:
        return None, f"no docker engine ({str(exc).splitlines()[0][:120]})"
    try:
        client.images.get(EMBEDDED_IMAGE)
    except Exception:
        return None, f"image {EMBEDDED_IMAGE} missing (run docker/build.sh)"
    return client, ""


CLIENT, WHY = _engine()
pytestmark = pytest.mark.skipif(CLIENT is None, reason=WHY)


def ours():
    return CLIENT.containers.list(all=True, filters={"label": "tfdeploy.managed=true"})


@pytest.fixture(autouse=True)
def no_leftovers():
    """Each test must leave no container of ours behind (containers that were there
    before the test, e.g. a developer's own servers, are not touched)."""
    before = {c.id for c in ours()}
    yield
    left = [c for c in ours() if c.id not in before]
    for c in left:
        c.remove(force=True)
    assert not left, "a test left a container behind"


def new_containers(before: set[str]) -> list:
    return [c for c in ours() if c.id not in before]


def test_docker_serve_predict_hot_swap_stop(demo_base, tmp_path):
    base = tmp_path / "deeplab"
    shutil.copytree(demo_base / "1", base / "1")
    grpc_port, rest_port = free_port(), free_port()
    before = {c.id for c in ours()}
    out = json.loads(run_cli("serve", str(base), "--runtime", "docker", "--image",
                             EMBEDDED_IMAGE, "--grpc-port", grpc_port, "--rest-port",
                             rest_port, "--poll-seconds", "0.5", "--json").stdout)
    try:
        assert out["runtime"] == "docker" and out["versions"] == {"1": "AVAILABLE"}
        (container,) = new_containers(before)
        info = container.attrs
        assert info["Config"]["Image"] == EMBEDDED_IMAGE
        assert "MODEL_NAME=deeplab" in info["Config"]["Env"]
        (mount,) = info["Mounts"]
        assert mount["Destination"] == "/models/deeplab" and mount["RW"] is False
        assert mount["Source"] == str(base)
        bindings = info["HostConfig"]["PortBindings"]
        assert bindings["8500/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": str(grpc_port)}]
        assert bindings["8501/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": str(rest_port)}]
        assert info["Config"]["Labels"]["tfdeploy.name"] == "deeplab"

        masks = tmp_path / "masks"
        run_cli("predict", *map(str, EXAMPLES[:2]), "-o", str(masks))
        loaded = tf.saved_model.load(str(demo_base / "1"))
        for path in EXAMPLES[:2]:  # predict sends the JPEG as it is to serving_default
            expected = loaded.signatures["serving_default"](
                image_bytes=tf.constant([path.read_bytes()]))["segmentation_map"].numpy()[0]
            np.testing.assert_array_equal(np.asarray(Image.open(masks / f"{path.stem}.png")),
                                          expected)

        run_cli("export", "-o", str(base), "--no-verify")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            versions = json.loads(run_cli("status", "--json").stdout)[0]["versions"]
            if versions == {"2": "AVAILABLE", "1": "END"}:
                break
            time.sleep(0.5)
        assert versions == {"2": "AVAILABLE", "1": "END"}
        assert "version 2 is AVAILABLE" in run_cli("logs").stdout
    finally:
        run_cli("stop", "deeplab")
    assert new_containers(before) == [] and state.load_all() == {}


@pytest.fixture
def gpu_tag():
    """The embedded image under the official -gpu name, so the default GPU image resolves
    locally (nothing can be pulled here)."""
    from tfdeploy.runtime.docker import default_image

    tag = default_image(gpu=True)
    image = CLIENT.images.get(EMBEDDED_IMAGE)
    had = tag in [t for i in CLIENT.images.list() for t in i.tags]
    image.tag(*tag.rsplit(":", 1))
    yield tag
    if not had:
        CLIENT.images.remove(tag, noprune=True)


def test_gpu_container_request_and_clear_error(demo_base, gpu_tag):
    from tfdeploy.runtime.base import ServeSpec
    from tfdeploy.runtime.docker import NO_GPU_HINT, DockerRuntime

    before = {c.id for c in ours()}
    spec = ServeSpec(base_path=demo_base, gpu=True, gpus=["0"], grpc_port=free_port(),
                     rest_port=free_port())
    container = DockerRuntime().create(spec)
    try:
        info = container.attrs
        assert info["Config"]["Image"] == gpu_tag and gpu_tag.endswith("-gpu")
        (request,) = info["HostConfig"]["DeviceRequests"]
        assert request["Capabilities"] == [["gpu"]] and request["DeviceIDs"] == ["0"]
        assert info["State"]["Status"] == "created"
    finally:
        container.remove(force=True)
    proc = run_cli("serve", str(demo_base), "--runtime", "docker", "--gpu", "--grpc-port",
                   free_port(), "--rest-port", free_port(), check=False)
    assert proc.returncode == 2, proc.stderr
    assert NO_GPU_HINT in proc.stderr and "Traceback" not in proc.stderr
    assert new_containers(before) == [] and state.load_all() == {}


def test_missing_image_and_auto_fallback(demo_base):
    before = {c.id for c in ours()}
    proc = run_cli("serve", str(demo_base), "--runtime", "docker", "--image",
                   "tfdeploy/no-such-image:1", "--grpc-port", free_port(), "--rest-port",
                   free_port(), check=False)
    assert proc.returncode == 2
    assert "cannot pull tfdeploy/no-such-image:1" in proc.stderr
    assert "--image" in proc.stderr and "embedded runtime" in proc.stderr
    assert "docker/build.sh" in proc.stderr and EMBEDDED_IMAGE in proc.stderr
    # auto: the engine answers but the official image is neither here nor pullable, and
    # tensorflow_model_server is not installed: embedded, and it says why
    proc = run_cli("serve", str(demo_base), "--image", "tfdeploy/no-such-image:1",
                   "--grpc-port", free_port(), "--rest-port", free_port(), "--name", "auto")
    try:
        assert "with the embedded runtime" in proc.stdout
        assert "not docker: tfdeploy/no-such-image:1 is not present" in proc.stderr
    finally:
        run_cli("stop", "auto")
    assert new_containers(before) == []


def test_model_config_file_is_rewritten_for_the_container(demo_base, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(demo_base / "1", other / "7")
    config = tmp_path / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "deeplab" base_path: '
                      f'"{demo_base}" }} config {{ name: "other" base_path: "{other}" }} }}')
    before = {c.id for c in ours()}
    run_cli("serve", "--model-config-file", str(config), "--runtime", "docker", "--image",
            EMBEDDED_IMAGE, "--grpc-port", free_port(), "--rest-port", free_port())
    try:
        (container,) = new_containers(before)
        targets = {m["Destination"]: m["RW"] for m in container.attrs["Mounts"]}
        assert targets == {"/models/deeplab": False, "/models/other": False,
                           "/config/models.config": False}
        import urllib.request

        record = state.load_all()["deeplab"]
        with urllib.request.urlopen(f"http://{record.rest_endpoint}/v1/models/other") as r:
            status = json.loads(r.read())["model_version_status"]
        assert status[0]["version"] == "7" and status[0]["state"] == "AVAILABLE"
    finally:
        run_cli("stop", "deeplab")


def _official_present() -> bool:
    from tfdeploy.runtime.docker import default_image

    # Evaluated at collection: with no docker engine the module's tests skip, not error.
    return CLIENT is not None and any(default_image(gpu=False) in i.tags
                                      for i in CLIENT.images.list())


@pytest.mark.skipif(_official_present(), reason="the official image is here: auto uses it")
def test_auto_uses_the_local_image_with_limits_env_volumes_and_free_ports(demo_base,
                                                                        tmp_path):
    """Without the official image, auto serves with the locally built one; docker's
    --cpus, --memory, --env, --volume and flags after -- reach the container; port 0
    publishes free ports that status shows."""
    extra = tmp_path / "extra"
    extra.mkdir()
    before = {c.id for c in ours()}
    proc = run_cli("serve", str(demo_base), "--name", "local", "--grpc-port", "0",
                   "--rest-port", "0", "--cpus", "1.5", "--memory", "2g", "-e",
                   "CLOUD_TOKEN=abc", "-v", f"{extra}:/extra:ro", "--json", "--",
                   "--max_num_load_retries=1")
    out = json.loads(proc.stdout)
    try:
        assert out["runtime"] == "docker" and out["image"] == EMBEDDED_IMAGE
        assert f"using the locally built {EMBEDDED_IMAGE}" in out["why"]
        assert 0 not in (out["grpc_port"], out["rest_port"])
        (container,) = new_containers(before)
        info = container.attrs
        host = info["HostConfig"]
        assert host["NanoCpus"] == 1_500_000_000 and host["Memory"] == 2 * 1024 ** 3
        assert "CLOUD_TOKEN=abc" in info["Config"]["Env"]
        mounts = {m["Destination"]: (m["Source"], m["RW"]) for m in info["Mounts"]}
        assert mounts["/extra"] == (str(extra), False)
        assert "--max_num_load_retries=1" in info["Config"]["Cmd"]
        listed = json.loads(run_cli("status", "local", "--json").stdout)[0]
        assert listed["rest"] == f"127.0.0.1:{out['rest_port']}" and listed["running"]
        masks = tmp_path / "masks"
        run_cli("predict", str(EXAMPLES[0]), "-o", str(masks))
        assert (masks / f"{EXAMPLES[0].stem}.png").is_file()
    finally:
        run_cli("stop", "local")


def test_gpu_is_checked_before_any_pull(demo_base):
    """No GPU runtime here: the error comes before the (absent) -gpu image is pulled."""
    before = {c.id for c in ours()}
    proc = run_cli("serve", str(demo_base), "--runtime", "docker", "--gpu", "--grpc-port",
                   free_port(), "--rest-port", free_port(), check=False)
    from tfdeploy.runtime.docker import NO_GPU_HINT

    assert proc.returncode == 2 and NO_GPU_HINT in proc.stderr
    assert "pulling" not in proc.stderr
    proc = run_cli("serve", str(demo_base), "--gpu", "--grpc-port", free_port(),
                   "--rest-port", free_port(), check=False)  # auto: no runtime fits
    assert proc.returncode == 2 and f"not docker: {NO_GPU_HINT}" in proc.stderr
    assert new_containers(before) == [] and state.load_all() == {}


def test_containers_are_hardened_and_still_serve(demo_base, tmp_path):
    """Issue 24: `docker inspect` of a real container shows a non-root user, a read-only
    root filesystem with a bounded /tmp, no capabilities, no-new-privileges, pids and
    memory limits, and extra mounts read-only unless :rw; it still serves predictions.
    The docker socket is refused as a volume."""
    ro, rw = tmp_path / "ro", tmp_path / "rw"
    ro.mkdir()
    rw.mkdir()
    before = {c.id for c in ours()}
    run_cli("serve", str(demo_base), "--runtime", "docker", "--image", EMBEDDED_IMAGE,
            "--name", "hardened", "--grpc-port", free_port(), "--rest-port", free_port(),
            "-v", f"{ro}:/extra", "-v", f"{rw}:/scratch:rw", "--pids-limit", "512")
    try:
        (container,) = new_containers(before)
        host = container.attrs["HostConfig"]
        assert container.attrs["Config"]["User"] == "1000:1000"
        assert host["ReadonlyRootfs"] is True
        assert host["Tmpfs"] == {"/tmp": "rw,nosuid,nodev,size=256m,mode=1777"}
        assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
        assert host["SecurityOpt"] == ["no-new-privileges:true"]
        assert host["PidsLimit"] == 512 and host["Memory"] == 4 * 1024 ** 3
        assert host["Privileged"] is False
        mounts = {m["Destination"]: m["RW"] for m in container.attrs["Mounts"]}
        assert mounts == {"/models/deeplab": False, "/extra": False, "/scratch": True}
        # the server really runs as that user, and cannot write outside /tmp
        top = container.top(ps_args="-o pid,uid,args")["Processes"]
        assert top and all(p[1] == "1000" for p in top), top
        assert container.exec_run(["touch", "/etc/x"]).exit_code != 0
        assert container.exec_run(["touch", "/models/deeplab/x"]).exit_code != 0
        assert container.exec_run(["touch", "/tmp/x"]).exit_code == 0
        masks = tmp_path / "masks"
        run_cli("predict", str(EXAMPLES[0]), "--name", "hardened", "-o", str(masks))
        assert (masks / f"{EXAMPLES[0].stem}.png").is_file()
    finally:
        run_cli("stop", "hardened")
    for sock in ("/var/run/docker.sock", "/run/docker.sock"):
        if Path(sock).is_socket():
            for volume in (f"{sock}:/var/run/docker.sock", f"{Path(sock).parent}:/hostrun"):
                proc = run_cli("serve", str(demo_base), "--runtime", "docker", "--image",
                               EMBEDDED_IMAGE, "-v", volume, "--grpc-port", free_port(),
                               "--rest-port", free_port(), check=False)
                assert proc.returncode == 2, proc.stderr
                assert "docker socket" in proc.stderr and "Traceback" not in proc.stderr
            break
    assert new_containers(before) == []


def test_tls_server_in_a_container(demo_base, tmp_path):
    """`serve --runtime docker --ssl-config-file`: the SSL config is mounted read-only, the
    tfdeploy image serves gRPC over TLS and REST over HTTPS, and the record lets `predict
    --name` use both without --tls-* options."""
    from certs import make_certs, ssl_config

    certs = make_certs(tmp_path / "certs")
    config = ssl_config(certs, tmp_path / "ssl.config", client_verify=False)
    config.chmod(0o600)  # a private key: the container's user reads the state dir's copy
    before = {c.id for c in ours()}
    out = json.loads(run_cli("serve", str(demo_base), "--runtime", "docker", "--image",
                             EMBEDDED_IMAGE, "--name", "dtls", "--grpc-port", free_port(),
                             "--rest-port", free_port(), "--ssl-config-file", config,
                             "--json").stdout)
    try:
        assert out["grpc_tls"] and out["rest_tls"]
        (container,) = new_containers(before)
        mounts = {m["Destination"]: m["RW"] for m in container.attrs["Mounts"]}
        assert mounts["/config/ssl.config"] is False
        assert "--ssl_config_file=/config/ssl.config" in container.attrs["Config"]["Cmd"]
        for transport in ("grpc", "rest"):
            masks = tmp_path / f"masks-{transport}"
            run_cli("predict", str(EXAMPLES[0]), "--name", "dtls", "--transport", transport,
                    "-o", str(masks))
            assert (masks / f"{EXAMPLES[0].stem}.png").is_file()
    finally:
        run_cli("stop", "dtls")
