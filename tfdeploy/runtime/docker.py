"""The docker runtime: the official ``tensorflow/serving`` image (or ``-gpu``), through the
docker SDK.

The container follows the image's contract: ``MODEL_NAME``, the base path bind-mounted
read-only at ``/models/<name>``, gRPC 8500 and REST 8501 published on ``--host``
(127.0.0.1 by default).  Config files are mounted read-only under ``/config``; a model
config file is rewritten so its host base paths become the container's mount points.
Every container carries ``tfdeploy.*`` labels, so ``status``/``stop`` find exactly ours.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from tfdeploy.errors import UserError
from tfdeploy.runtime.base import ServeSpec, check_ports_free, parse_volume
from tfdeploy.runtime.state import ServerRecord, ensure_state_dir, private_file, state_dir

LABEL = "tfdeploy.managed"
CONTAINER_PORTS = {"grpc": 8500, "rest": 8501}
#: What docker/build.sh builds from a source checkout: tfdeploy-model-server with the
#: official image's contract, for engines that cannot pull tensorflow/serving.
LOCAL_IMAGE = "tfdeploy/serving-embedded:latest"
BUILD_HINT = (f"build {LOCAL_IMAGE} with `bash docker/build.sh` (in a tfdeploy source "
              "checkout; no registry needed), pass --image, or use the embedded runtime "
              "(--runtime embedded)")
#: Hardening every container gets (issue 24): a non-root user (TF Serving needs no
#: privilege; the official image would run as root), a read-only root filesystem with a
#: bounded /tmp, no capabilities, no privilege gain through setuid binaries, and pids and
#: memory limits.  ``--user``, ``--pids-limit`` and ``--memory`` change the defaults.
DEFAULT_USER = "1000:1000"
DEFAULT_PIDS_LIMIT = 4096
DEFAULT_MEMORY = "4g"
TMPFS = {"/tmp": "rw,nosuid,nodev,size=256m,mode=1777"}
NO_GPU_HINT = ("the docker engine has no GPU runtime: install the NVIDIA driver and the "
               "NVIDIA Container Toolkit (nvidia-container-toolkit), restart docker, or "
               "serve without --gpu")


def serving_version() -> str:
    """The TF Serving release matching the installed TF Serving API (e.g. 2.21.0)."""
    try:
        return version("tensorflow-serving-api")
    except PackageNotFoundError:
        return "latest"


def default_image(gpu: bool, release: str | None = None) -> str:
    tag = release or serving_version()
    return f"tensorflow/serving:{tag}{'-gpu' if gpu else ''}"


def _split(image: str) -> tuple[str, str]:
    repo, _, tag = image.rpartition(":")
    if not repo or "/" in tag:
        return image, "latest"
    return repo, tag


class DockerRuntime:
    name = "docker"

    def __init__(self, client=None):
        self._client = client

    # -- engine --------------------------------------------------------------------------
    def client(self):
        if self._client is None:
            import docker

            try:
                self._client = docker.from_env(timeout=60)
                self._client.ping()
            except Exception as exc:
                self._client = None
                raise UserError(f"no docker engine answers ({_short(exc)}); start dockerd, "
                                "or use --runtime embedded") from None
        return self._client

    def _has_image(self, image: str) -> bool:
        try:
            self.client().images.get(image)
            return True
        except UserError:
            raise
        except Exception:
            return False

    def image_for(self, spec: ServeSpec) -> str:
        """``--image``, else the official image; when that is absent (CPU only), a locally
        built LOCAL_IMAGE if the engine has one (no pull needed)."""
        if spec.image:
            return spec.image
        official = default_image(spec.gpu)
        if (not spec.gpu and not self._has_image(official)
                and self._has_image(LOCAL_IMAGE)):
            return LOCAL_IMAGE
        return official

    def check_gpu(self) -> None:
        """Fail before any pull when the engine cannot give containers a GPU."""
        import shutil

        info = self.client().info()
        if "nvidia" in (info.get("Runtimes") or {}):
            return
        if shutil.which("nvidia-container-cli") or shutil.which("nvidia-ctk"):
            return  # the toolkit's hook serves --gpus without a named runtime
        raise UserError(NO_GPU_HINT, param="gpu")

    def available(self, spec: ServeSpec) -> tuple[bool, str]:
        try:
            client = self.client()
        except UserError as exc:
            return False, str(exc)
        if spec.gpu:
            try:
                self.check_gpu()  # before looking for (or at the registry for) the image
            except UserError as exc:
                return False, exc.message
        image = self.image_for(spec)
        try:
            client.images.get(image)
            if image == LOCAL_IMAGE and not spec.image:
                return True, (f"docker engine answers; {default_image(spec.gpu)} is absent, "
                              f"using the locally built {LOCAL_IMAGE}")
            return True, f"docker engine answers and {image} is present"
        except Exception:
            pass
        try:  # a pull will only work if the registry answers for this image
            client.images.get_registry_data(image)
            return True, f"docker engine answers and {image} can be pulled"
        except Exception as exc:
            return False, (f"{image} is not present and cannot be pulled ({_short(exc)}); "
                           f"to serve with docker anyway, {BUILD_HINT}")

    def ensure_image(self, image: str, progress: Callable[[str], None] | None = None) -> None:
        client = self.client()
        try:
            client.images.get(image)
            return
        except Exception:
            pass
        repo, tag = _split(image)
        say = progress or (lambda _m: None)
        say(f"pulling {image}")
        layers: dict[str, tuple[int, int]] = {}
        last = 0.0
        try:
            for event in client.api.pull(repo, tag=tag, stream=True, decode=True):
                if "error" in event:
                    raise RuntimeError(event["error"])
                detail = event.get("progressDetail") or {}
                if event.get("id") and detail.get("total"):
                    layers[event["id"]] = (detail.get("current", 0), detail["total"])
                if layers and time.monotonic() - last > 0.5:
                    done = sum(c for c, _ in layers.values())
                    total = sum(t for _, t in layers.values())
                    say(f"pulling {image}: {done / 1e6:.0f}/{total / 1e6:.0f} MB "
                        f"({100 * done / max(total, 1):.0f}%)")
                    last = time.monotonic()
            client.images.get(image)
        except Exception as exc:
            raise UserError(f"cannot pull {image} ({_short(exc)}); {BUILD_HINT}",
                            param="image") from None

    # -- containers ----------------------------------------------------------------------
    def _mounts_and_flags(self, spec: ServeSpec) -> tuple[list, list[str]]:
        from docker.types import Mount

        mounts = []
        if spec.base_path is not None:
            mounts.append(Mount(f"/models/{spec.model_name}", str(spec.base_path),
                                type="bind", read_only=True))
        config_path = batching_path = monitoring_path = None
        if spec.model_config_file:
            rewritten, extra = self._rewrite_model_config(spec)
            mounts += extra
            mounts.append(Mount("/config/models.config", str(rewritten), type="bind",
                                read_only=True))
            config_path = "/config/models.config"
        if spec.batching_parameters_file:
            mounts.append(Mount("/config/batching.config", str(spec.batching_parameters_file),
                                type="bind", read_only=True))
            batching_path = "/config/batching.config"
        if spec.monitoring_config_file:
            mounts.append(Mount("/config/monitoring.config", str(spec.monitoring_config_file),
                                type="bind", read_only=True))
            monitoring_path = "/config/monitoring.config"
        ssl_path = None
        if spec.ssl_config_file:
            mounts.append(Mount("/config/ssl.config", str(self._readable_ssl_config(spec)),
                                type="bind", read_only=True))
            ssl_path = "/config/ssl.config"
        flags = spec.server_flags(config_path=config_path, batching_path=batching_path,
                                  monitoring_path=monitoring_path, ssl_path=ssl_path)
        return mounts, flags

    def _rewrite_model_config(self, spec: ServeSpec) -> tuple[Path, list]:
        """Host base paths in the model config -> /models/<name> mounts in the container."""
        from docker.types import Mount

        from tfdeploy.serving.config import model_server_config

        config = model_server_config(spec.model_config_file)
        mounts = []
        for mc in config.model_config_list.config:
            host = Path(mc.base_path)
            if not host.is_absolute():
                host = (spec.model_config_file.parent / host).absolute()
            if "://" not in mc.base_path:
                target = f"/models/{mc.name}"
                if not (spec.base_path is not None and mc.name == spec.model_name):
                    mounts.append(Mount(target, str(host), type="bind", read_only=True))
                mc.base_path = target
        out = ensure_state_dir("configs") / f"{spec.name}.models.config"
        from google.protobuf import text_format

        # 0644, unlike the state's other files: the container's non-root user reads it
        # through its bind mount (it holds model names and paths, nothing secret).
        with os.fdopen(private_file(out), "w") as fh:
            os.fchmod(fh.fileno(), 0o644)
            fh.write(text_format.MessageToString(config))
        return out, mounts

    def _readable_ssl_config(self, spec: ServeSpec) -> Path:
        """The SSL config (it holds the server's private key) as a copy the container's
        non-root user can read: 0644 inside the state directory, which is 0700, so on
        this machine only its owner (and the engine, which mounts it) reach it; the
        user's own file may be 0600 for another uid than the container's."""
        out = ensure_state_dir("configs") / f"{spec.name}.ssl.config"
        with os.fdopen(private_file(out), "w") as fh:
            os.fchmod(fh.fileno(), 0o644)
            fh.write(Path(spec.ssl_config_file).read_text())
        return out

    def rest_tls(self, spec: ServeSpec) -> bool:
        """Whether REST speaks HTTPS under ``--ssl_config_file``: only in an image of
        tfdeploy-model-server (LOCAL_IMAGE, or one whose PATH holds its venv); the
        official image's tensorflow_model_server serves REST as plain HTTP."""
        image = self.image_for(spec)
        if image == LOCAL_IMAGE:
            return True
        try:
            env = self.client().images.get(image).attrs["Config"].get("Env") or []
        except Exception:
            return False
        return any(e.startswith("PATH=") and "/opt/tfdeploy/" in e for e in env)

    def create(self, spec: ServeSpec, progress: Callable[[str], None] | None = None):
        """Create (not start) the container; returns the docker SDK container object."""
        from docker.types import DeviceRequest, Mount

        client = self.client()
        image = self.image_for(spec)
        self.ensure_image(image, progress)
        mounts, flags = self._mounts_and_flags(spec)
        for volume in spec.volumes:
            host, target, read_only = parse_volume(volume)
            mounts.append(Mount(target, host, type="bind", read_only=read_only))
        devices = None
        if spec.gpu:
            devices = [DeviceRequest(device_ids=list(spec.gpus), capabilities=[["gpu"]])
                       if spec.gpus else DeviceRequest(count=-1, capabilities=[["gpu"]])]
        name = container_name(spec.name)
        self._remove_stale(name, spec.name)
        memory = (spec.memory or DEFAULT_MEMORY).strip().lower()
        try:
            return client.containers.create(
                image, command=flags, name=name, detach=True,
                # HOME: a user with no passwd entry gets "/", which is read-only here
                environment={"MODEL_NAME": spec.model_name, "HOME": "/tmp", **spec.env},
                mounts=mounts,
                ports={f"{CONTAINER_PORTS['grpc']}/tcp": (spec.host, spec.grpc_port),
                       f"{CONTAINER_PORTS['rest']}/tcp": (spec.host, spec.rest_port)},
                labels={LABEL: "true", "tfdeploy.name": spec.name,
                        "tfdeploy.model": spec.model_name,
                        "tfdeploy.base_path": str(spec.base_path or ""),
                        "tfdeploy.gpu": str(spec.gpu).lower(),
                        "tfdeploy.state_dir": str(state_dir())},
                device_requests=devices,
                restart_policy={"Name": spec.restart} if spec.restart else None,
                nano_cpus=int(spec.cpus * 1e9) if spec.cpus else None,
                mem_limit=None if memory == "none" else memory,
                user=spec.user or DEFAULT_USER,
                read_only=True, tmpfs=dict(TMPFS),
                cap_drop=["ALL"], security_opt=["no-new-privileges:true"],
                pids_limit=spec.pids_limit or DEFAULT_PIDS_LIMIT,
            )
        except Exception as exc:
            raise UserError(f"cannot create container {name}: {_short(exc)}") from None

    def _remove_stale(self, name: str, server: str) -> None:
        """A stopped container of ours with the same name (e.g. after a crash) goes."""
        import docker

        try:
            old = self.client().containers.get(name)
        except docker.errors.NotFound:
            return
        if old.labels.get(LABEL) != "true":
            raise UserError(f"a container named {name} exists and is not tfdeploy's")
        if old.status == "running":
            raise UserError(f"server {server} is already running (tfdeploy stop {server})")
        old.remove(force=True)

    def start(self, spec: ServeSpec, progress: Callable[[str], None] | None = None
              ) -> ServerRecord:
        check_ports_free(spec.host, spec.grpc_port, spec.rest_port)
        if spec.gpu:
            self.check_gpu()  # before create(), which may pull a multi-GB -gpu image
        container = self.create(spec, progress)
        if spec.ssl_config_file and not self.rest_tls(spec):
            import logging

            logging.getLogger("tfdeploy.runtime").warning(
                "%s (tensorflow_model_server) serves gRPC over TLS with --ssl_config_file "
                "but REST as plain HTTP; %s serves HTTPS on REST too",
                self.image_for(spec), LOCAL_IMAGE)
        try:
            container.start()
        except Exception as exc:
            container.remove(force=True)
            text = str(exc)
            if spec.gpu and ("device driver" in text or "gpu" in text.lower()
                             or "nvidia" in text.lower()):
                raise UserError(NO_GPU_HINT) from None
            if "address already in use" in text or "port is already allocated" in text:
                raise UserError(f"port {spec.grpc_port} or {spec.rest_port} on {spec.host} "
                                "is already in use") from None
            raise UserError(f"cannot start container: {_short(exc)}") from None
        return ServerRecord(name=spec.name, runtime=self.name, model_name=spec.model_name,
                            base_path=str(spec.base_path or ""), host=spec.host,
                            grpc_port=spec.grpc_port, rest_port=spec.rest_port,
                            container_id=container.id, image=self.image_for(spec),
                            started_at=time.time(), models=spec.model_names())

    def _container(self, record: ServerRecord):
        """The record's container, only if its labels say tfdeploy started it for this
        server and state directory (a record never steers us to someone else's)."""
        import docker

        try:
            c = self.client().containers.get(record.container_id)
        except docker.errors.NotFound:
            return None
        labels = c.labels or {}
        if (labels.get(LABEL) != "true" or labels.get("tfdeploy.name") != record.name
                or labels.get("tfdeploy.state_dir") != str(state_dir())):
            raise UserError(f"container {str(record.container_id)[:12]} is not the one "
                            f"tfdeploy started for {record.name}; not touched")
        return c

    def alive(self, record: ServerRecord) -> bool:
        try:
            c = self._container(record)
        except UserError:
            return False
        if c is None:
            return False
        c.reload()
        return c.status in ("running", "restarting", "created")

    def logs(self, record: ServerRecord, follow: bool = False, tail: int = 100
             ) -> Iterator[str]:
        c = self._container(record)
        if c is None:
            return
        if not follow:
            yield from c.logs(tail=tail).decode(errors="replace").splitlines()
            return
        buf = b""
        for chunk in c.logs(stream=True, follow=True, tail=tail):
            buf += chunk
            *lines, buf = buf.split(b"\n")
            yield from (line.decode(errors="replace") for line in lines)

    def stop(self, record: ServerRecord, timeout: float = 30) -> None:
        c = self._container(record)
        if c is None:
            return
        try:
            c.stop(timeout=int(timeout))
        finally:
            c.remove(force=True)

    def managed_containers(self) -> list:
        """Containers created by tfdeploy with this state directory (this user's)."""
        return self.client().containers.list(all=True, filters={"label": [
            f"{LABEL}=true", f"tfdeploy.state_dir={state_dir()}"]})


def container_name(server: str) -> str:
    """Docker names are engine-wide: qualify ours by the state dir (one per user / test
    run), so two users' servers called "deeplab" do not collide."""
    import hashlib

    return f"tfdeploy-{server}-{hashlib.sha1(str(state_dir()).encode()).hexdigest()[:6]}"


def _short(exc: Exception) -> str:
    text = getattr(exc, "explanation", None) or str(exc)
    return str(text).strip().splitlines()[0][:300] if str(text).strip() else type(exc).__name__
