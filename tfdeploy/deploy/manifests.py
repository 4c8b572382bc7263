"""Ready-to-apply manifests for scaling out: plain Kubernetes, KServe, docker compose.

All three run the official ``tensorflow/serving`` image (``-gpu`` with ``--gpu``) on the
same exported base path.  Storage: a ``gs://``/``s3://`` base path is read by TF Serving
directly; a local path becomes a PersistentVolumeClaim (Kubernetes, KServe ``pvc://``) or
a read-only bind mount (compose).  Objects are plain dicts, written as YAML.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tfdeploy.errors import UserError

REMOTE_SCHEMES = ("gs://", "s3://", "hdfs://", "http://", "https://")
MANAGED_BY = {"app.kubernetes.io/managed-by": "tfdeploy"}


def default_image(gpu: bool) -> str:
    from tfdeploy.runtime.docker import default_image as image

    return image(gpu)


@dataclass
class ManifestSpec:
    source: str  # local base path or storage URI
    model_name: str = "deeplab"
    replicas: int = 1
    max_replicas: int | None = None
    gpu: bool = False
    image: str | None = None
    pvc: str | None = None  # claim name for a local base path
    pvc_size: str = "2Gi"
    storage_class: str | None = None
    cpu: str = "1"
    memory: str = "2Gi"
    namespace: str | None = None
    node_selector: dict[str, str] = field(default_factory=dict)
    model_config_file: Path | None = None
    batching_parameters_file: Path | None = None
    grpc_port: int = 8500
    rest_port: int = 8501
    host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise UserError("--replicas must be at least 1")
        self.max_replicas = self.max_replicas or max(3 * self.replicas, self.replicas + 1)
        if self.max_replicas < self.replicas:
            raise UserError("--max-replicas must be >= --replicas")
        self.image = self.image or default_image(self.gpu)
        self.pvc = self.pvc or f"{self.name}-models"

    @property
    def remote(self) -> bool:
        return self.source.startswith(REMOTE_SCHEMES)

    @property
    def name(self) -> str:
        return f"{self.model_name}-serving".lower().replace("_", "-")

    @property
    def labels(self) -> dict[str, str]:
        return {"app.kubernetes.io/name": self.name, **MANAGED_BY}

    def meta(self, name: str | None = None) -> dict[str, Any]:
        m: dict[str, Any] = {"name": name or self.name, "labels": dict(self.labels)}
        if self.namespace:
            m["namespace"] = self.namespace
        return m


def _server_args(spec: ManifestSpec, base_path: str, config: bool, batching: bool) -> list[str]:
    args = ["--port=8500", "--rest_api_port=8501"]
    if config:
        args.append("--model_config_file=/config/models.config")
    else:
        args += [f"--model_name={spec.model_name}", f"--model_base_path={base_path}"]
    if batching:
        args += ["--enable_batching=true", "--batching_parameters_file=/config/batching.config"]
    return args


def kubernetes(spec: ManifestSpec) -> list[dict[str, Any]]:
    """ConfigMap (optional), PVC (local source), Deployment, Service, HPA."""
    objects: list[dict[str, Any]] = []
    config_data = {}
    if spec.model_config_file:
        config_data["models.config"] = Path(spec.model_config_file).read_text()
    if spec.batching_parameters_file:
        config_data["batching.config"] = Path(spec.batching_parameters_file).read_text()
    if config_data:
        objects.append({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": spec.meta(f"{spec.name}-config"), "data": config_data})
    mount = f"/models/{spec.model_name}"
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    if not spec.remote:
        claim: dict[str, Any] = {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": spec.meta(spec.pvc),
            "spec": {"accessModes": ["ReadOnlyMany"],
                     "resources": {"requests": {"storage": spec.pvc_size}}}}
        if spec.storage_class:
            claim["spec"]["storageClassName"] = spec.storage_class
        objects.append(claim)
        volumes.append({"name": "models", "persistentVolumeClaim": {"claimName": spec.pvc,
                                                                    "readOnly": True}})
        mounts.append({"name": "models", "mountPath": mount, "readOnly": True})
    if config_data:
        volumes.append({"name": "config", "configMap": {"name": f"{spec.name}-config"}})
        mounts.append({"name": "config", "mountPath": "/config", "readOnly": True})
    probe = {"httpGet": {"path": f"/v1/models/{spec.model_name}", "port": "http"}}
    resources: dict[str, Any] = {"requests": {"cpu": spec.cpu, "memory": spec.memory},
                                 "limits": {"memory": spec.memory}}
    if spec.gpu:
        resources["limits"]["nvidia.com/gpu"] = 1
    pod: dict[str, Any] = {
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000,
                            "fsGroup": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": "tensorflow-serving",
            "image": spec.image,
            "command": ["tensorflow_model_server"],
            "args": _server_args(spec, spec.source if spec.remote else mount,
                                 bool(spec.model_config_file),
                                 bool(spec.batching_parameters_file)),
            "ports": [{"name": "grpc", "containerPort": 8500, "protocol": "TCP"},
                      {"name": "http", "containerPort": 8501, "protocol": "TCP"}],
            "readinessProbe": {**probe, "initialDelaySeconds": 5, "periodSeconds": 5},
            "livenessProbe": {**probe, "initialDelaySeconds": 60, "periodSeconds": 15,
                              "failureThreshold": 4},
            "resources": resources,
            "securityContext": {"allowPrivilegeEscalation": False, "privileged": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]}},
            "volumeMounts": mounts,
        }],
        "volumes": volumes,
    }
    if spec.gpu:
        pod["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists",
                               "effect": "NoSchedule"}]
    if spec.node_selector:
        pod["nodeSelector"] = dict(spec.node_selector)
    objects.append({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": spec.meta(),
        "spec": {"replicas": spec.replicas,
                 "selector": {"matchLabels": {"app.kubernetes.io/name": spec.name}},
                 "template": {"metadata": {"labels": dict(spec.labels)}, "spec": pod}}})
    objects.append({
        "apiVersion": "v1", "kind": "Service", "metadata": spec.meta(),
        "spec": {"selector": {"app.kubernetes.io/name": spec.name},
                 "ports": [{"name": "grpc", "port": 8500, "targetPort": "grpc"},
                           {"name": "http", "port": 8501, "targetPort": "http"}]}})
    objects.append({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": spec.meta(),
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                    "name": spec.name},
                 "minReplicas": spec.replicas, "maxReplicas": spec.max_replicas,
                 "metrics": [{"type": "Resource", "resource": {
                     "name": "cpu", "target": {"type": "Utilization",
                                               "averageUtilization": 70}}}]}})
    return objects


def kserve(spec: ManifestSpec) -> list[dict[str, Any]]:
    """An InferenceService with a TensorFlow predictor on the storage URI."""
    from tfdeploy.runtime.docker import serving_version

    uri = spec.source if spec.remote else f"pvc://{spec.pvc}/{spec.model_name}"
    resources: dict[str, Any] = {"requests": {"cpu": spec.cpu, "memory": spec.memory},
                                 "limits": {"memory": spec.memory}}
    if spec.gpu:
        resources["limits"]["nvidia.com/gpu"] = "1"
    version = serving_version()
    meta = spec.meta(spec.model_name.lower().replace("_", "-"))
    return [{
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": meta,
        "spec": {"predictor": {
            "minReplicas": spec.replicas, "maxReplicas": spec.max_replicas,
            "model": {"modelFormat": {"name": "tensorflow"},
                      "runtimeVersion": f"{version}-gpu" if spec.gpu else version,
                      "storageUri": uri, "resources": resources},
        }},
    }]


def compose(spec: ManifestSpec) -> dict[str, Any]:
    """N replicas of the serving image on the local base path (read-only), each with its
    own ports on ``host``: replica i listens on grpc_port + 2i and rest_port + 2i."""
    if spec.remote:
        raise UserError("compose needs a local base path (TF Serving in compose cannot read "
                        f"{spec.source.split('://')[0]}:// without credentials set up)")
    base = str(Path(spec.source).absolute())
    services = {}
    for i in range(spec.replicas):
        service: dict[str, Any] = {
            "image": spec.image,
            "environment": {"MODEL_NAME": spec.model_name},
            "volumes": [f"{base}:/models/{spec.model_name}:ro"],
            "ports": [f"{spec.host}:{spec.grpc_port + 2 * i}:8500",
                      f"{spec.host}:{spec.rest_port + 2 * i}:8501"],
            "restart": "unless-stopped",
            "labels": {"tfdeploy.managed": "compose", "tfdeploy.replica": str(i + 1)},
        }
        if spec.gpu:
            service["deploy"] = {"resources": {"reservations": {"devices": [
                {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]}}}
        services[f"{spec.name}-{i + 1}"] = service
    return {"version": "3.8", "services": services}


def endpoints(spec: ManifestSpec, transport: str = "grpc") -> list[str]:
    port = spec.grpc_port if transport == "grpc" else spec.rest_port
    return [f"{spec.host}:{port + 2 * i}" for i in range(spec.replicas)]


def _plain_dumper():
    import yaml

    class PlainDumper(yaml.SafeDumper):
        """No &anchors/*aliases: kubectl and humans read repeated blocks more easily."""

        def ignore_aliases(self, data) -> bool:
            return True

    return PlainDumper


def write(target: str, spec: ManifestSpec, out_dir: Path) -> list[Path]:
    """Write the target's files into ``out_dir`` (atomically each); returns their paths."""
    import os
    import tempfile

    import yaml

    _PlainDumper = _plain_dumper()  # noqa: N806
    if target == "k8s":
        files = {f"{spec.name}.k8s.yaml": kubernetes(spec)}
    elif target == "kserve":
        files = {f"{spec.name}.kserve.yaml": kserve(spec)}
    elif target == "compose":
        files = {"compose.yaml": [compose(spec)]}
    else:
        raise UserError(f"unknown target {target!r} (k8s, kserve, compose)")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, docs in files.items():
        text = "# generated by tfdeploy manifest; apply as is or adapt\n" + yaml.dump_all(
            docs, Dumper=_PlainDumper, sort_keys=False, default_flow_style=False)
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, out_dir / name)
        written.append(out_dir / name)
    return written


def parse_node_selectors(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``KEY=VALUE`` strings -> a node selector mapping."""
    selectors = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"wants KEY=VALUE, got {item!r}", param="node_selector")
        selectors[key] = value
    return selectors


def check_source(target: str, spec: ManifestSpec) -> None:
    """A local base path must exist for the targets that mount it."""
    if not spec.remote and target != "kserve" and not Path(spec.source).is_dir():
        raise UserError(f"{spec.source}: no such base path (export first, or give a gs:// "
                        "or s3:// URI)")


def next_steps(target: str, spec: ManifestSpec, files: list[Path]) -> str:
    """What the user does with the files just written."""
    if target == "compose":
        return (f"then: docker compose -f {files[0]} up -d && tfdeploy predict IMAGES "
                f"--server {','.join(endpoints(spec, 'grpc'))}")
    if not spec.remote:
        return (f"copy {spec.source} into the volume of claim {spec.pvc} "
                f"(as {spec.model_name}/<version>/) before applying")
    return ""
