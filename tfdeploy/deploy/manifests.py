"""Ready-to-apply manifests for scaling out: plain Kubernetes, KServe, docker compose.

All three run the official ``tensorflow/serving`` image (``-gpu`` with ``--gpu``) on the
same exported base path; ``--protocol v2`` runs tfdeploy-model-server from our embedded
image instead (``--image``: the official one has no Open Inference Protocol), probed on
the protocol's model-free ``/v2/health`` URLs.  Storage:

- a ``gs://`` / ``s3://`` SOURCE is read by TF Serving directly, with credentials from
  ``--service-account`` (workload identity), ``--secret-env`` (env vars) or
  ``--secret-file`` (a mounted key file);
- a local SOURCE is not visible to a cluster: Kubernetes mounts an existing claim that
  holds ``<model>/<version>/`` (``--pvc``), or gives every pod its own ReadWriteOnce claim
  that an initContainer fills from where SOURCE was uploaded (``--fill-from``); KServe
  reads ``pvc://<claim>/<model>``; compose bind mounts SOURCE read-only.

Objects are plain dicts, written as YAML.  Option checks live in ``options.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from tfdeploy.deploy import canary, options
from tfdeploy.errors import UserError
from tfdeploy.tfs.flags import format_flag
from tfdeploy.tfs.names import GRPC_PORT, REST_PORT

MANAGED_BY = {"app.kubernetes.io/managed-by": "tfdeploy"}
GRPC, REST = GRPC_PORT, REST_PORT
METRICS_PATH = "/monitoring/prometheus/metrics"
#: The Open Inference Protocol's model-free health URLs (``--protocol v2``).
V2_READY, V2_LIVE = "/v2/health/ready", "/v2/health/live"
MODELS_DIR = "/models"
SECRETS_DIR = "/var/run/secrets/tfdeploy"
# Images that copy a bucket into the pod's volume (``--fill-image`` overrides).
FILL_IMAGES = {"gs://": "google/cloud-sdk:488.0.0-slim", "s3://": "amazon/aws-cli:2.17.0"}
#: The writable /tmp of read-only containers: bounded, so a runaway writer fills its own
#: volume, not the node's disk.  Ephemeral storage (that /tmp and the container's logs)
#: is requested and limited for the same reason.
TMP_SIZE = "256Mi"
EPHEMERAL = {"requests": "256Mi", "limits": "1Gi"}
#: compose / docker: a non-root user (the official image runs as root by default; TF
#: Serving needs no privilege), a pids limit and a memory limit, all changeable.
CONTAINER_USER = "1000:1000"
PIDS_LIMIT = 4096
#: Pods the NetworkPolicy admits: those labelled ``tfdeploy/client: <name>`` (any port
#: the Service has) and Prometheus (metrics on the REST port) from any namespace.
CLIENT_LABEL = "tfdeploy/client"
PROMETHEUS_LABELS = {"app.kubernetes.io/name": "prometheus"}
DEFAULTS: dict[str, Any] = {"pvc_size": "2Gi", "cpu": "1", "memory": "2Gi",
                            "grpc_port": GRPC, "rest_port": REST, "host": "127.0.0.1",
                            "transport": "grpc"}


def default_image(gpu: bool) -> str:
    from tfdeploy.runtime.docker import default_image as image

    return image(gpu)


@dataclass
class ManifestSpec:
    """What the user asked for.  Options left None were not given: ``resolve`` checks the
    given ones against the target and fills in the defaults."""

    source: str  # local base path or storage URI
    model_name: str = "deeplab"
    replicas: int = 1
    max_replicas: int | None = None
    gpu: bool = False
    gpus: int | None = None
    image: str | None = None
    pvc: str | None = None  # existing claim holding <model>/<version>/
    pvc_size: str | None = None
    storage_class: str | None = None
    fill_from: str | None = None
    fill_image: str | None = None
    cpu: str | None = None
    cpu_limit: str | None = None
    memory: str | None = None
    namespace: str | None = None
    node_selector: dict[str, str] = field(default_factory=dict)
    model_config_file: Path | None = None
    batching_parameters_file: Path | None = None
    service_account: str | None = None
    secret_env: str | None = None
    secret_file: str | None = None  # SECRET[/KEY]
    service_monitor: bool = False
    startup_timeout: int | None = None
    scale_metric: str | None = None
    scale_target: int | None = None
    batcher_max_batch_size: int | None = None
    batcher_max_latency: int | None = None  # milliseconds
    transport: str | None = None  # kserve: which port the InferenceService exposes
    protocol: str | None = None  # kserve: "v2" runs tfdeploy-model-server (v2 + v1 API)
    grpc_port: int | None = None
    rest_port: int | None = None
    host: str | None = None
    #: k8s/kserve: share of traffic for a canary (see ``deploy/canary.py``); k8s: the
    #: version the canary Deployment serves and the one the stable Deployment keeps
    canary_percent: int | None = None
    canary_version: int | None = None
    stable_version: int | None = None

    @property
    def remote(self) -> bool:
        return options.is_remote(self.source)

    @property
    def name(self) -> str:
        return f"{self.model_name}-serving".lower().replace("_", "-")

    @property
    def kserve_name(self) -> str:
        return self.model_name.lower().replace("_", "-")

    @property
    def labels(self) -> dict[str, str]:
        return {"app.kubernetes.io/name": self.name, **MANAGED_BY}

    @property
    def gpu_count(self) -> int:
        return self.gpus or (1 if self.gpu else 0)

    @property
    def autoscaled(self) -> bool:
        """An HPA (or KServe's autoscaler) owns the replica count."""
        return bool(self.max_replicas and self.max_replicas > self.replicas)

    @property
    def bucket(self) -> str | None:
        """The URI pods read from (SOURCE, or where a local SOURCE was uploaded)."""
        return self.source if self.remote else self.fill_from

    def meta(self, name: str | None = None) -> dict[str, Any]:
        m: dict[str, Any] = {"name": name or self.name, "labels": dict(self.labels)}
        if self.namespace:
            m["namespace"] = self.namespace
        return m

    def resolve(self, target: str) -> ManifestSpec:
        """Refuse what ``target`` cannot honour, check values, fill in defaults."""
        options.check_target_options(
            target, {f.name: getattr(self, f.name) for f in fields(self)})
        if self.replicas < 1:
            raise UserError("must be at least 1", param="replicas")
        if self.max_replicas is not None and self.max_replicas < self.replicas:
            raise UserError.about("must be at least {replicas}", param="max_replicas")
        if self.gpus is not None and self.gpus < 1:
            raise UserError("must be at least 1", param="gpus")
        if self.startup_timeout is not None and self.startup_timeout < 10:
            raise UserError("must be at least 10 seconds", param="startup_timeout")
        options.check_scale(target, self.scale_metric, self.scale_target)
        self._check_values(target)
        for opt, name in (("pvc", self.pvc), ("service_account", self.service_account),
                          ("secret_env", self.secret_env)):
            if name is not None:
                options.check_object_name(opt, name)
        if self.namespace is not None:
            options.check_object_name("namespace", self.namespace, label=True)
        if self.secret_file is not None:
            options.parse_secret_file(self.secret_file)
        self._check_storage(target)
        self._check_protocol()
        if target == "kserve":
            self._check_kserve()
        canary.check(self, target)
        if target != "compose" and self.max_replicas is None:
            self.max_replicas = max(3 * self.replicas, self.replicas + 1)
        if target == "k8s" and not self.autoscaled and (self.scale_metric or
                                                        self.scale_target):
            raise UserError.about("{scale_metric} / {scale_target} configure the autoscaler, "
                                  "and {max_replicas} equal to {replicas} turns it off")
        for key, value in DEFAULTS.items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        self.image = self.image or default_image(self.gpu_count > 0)
        return self

    def _check_values(self, target: str) -> None:
        """Every value that reaches a file or a printed command is what it claims to be
        (deliverable of issue 24: no value may escape its argument or change meaning)."""
        options.check_model_name(self.model_name)
        if target == "kserve":
            options.check_service_name(self.model_name, self.kserve_name)
        elif target == "k8s":
            options.check_service_name(self.model_name, self.name)
        if self.remote:
            options.check_source_uri(self.source)
        elif "\0" in self.source:
            raise UserError("is not a path", param="source")
        if self.fill_from is not None and self.fill_from.startswith(options.FILL_SCHEMES):
            options.check_bucket_uri("fill_from", self.fill_from)
        for opt in ("image", "fill_image"):
            if getattr(self, opt) is not None:
                options.check_image(opt, getattr(self, opt))
        for opt in ("cpu", "cpu_limit", "memory", "pvc_size"):
            if getattr(self, opt) is not None:
                options.check_quantity(opt, getattr(self, opt))
        if self.storage_class is not None:
            options.check_object_name("storage_class", self.storage_class)
        for key, value in self.node_selector.items():
            options.check_label("node_selector", key, value)
        if self.host is not None:
            options.check_host(self.host)
        for opt in ("grpc_port", "rest_port"):
            port = getattr(self, opt)
            if port is not None and not 1 <= port <= 65535 - 2 * self.replicas:
                raise UserError("must be a port number (1-65535, room for every replica)",
                                param=opt)

    def _check_storage(self, target: str) -> None:
        if self.remote:
            for opt, value in (("pvc", self.pvc), ("fill_from", self.fill_from)):
                if value is not None:
                    raise UserError.about("is for a local base path; {source} is read by TF "
                                          "Serving directly", param=opt, source=self.source)
        elif target == "k8s":
            if self.pvc and self.fill_from:
                raise UserError.about("{pvc} (an existing claim) and {fill_from} (a new claim "
                                      "per pod, filled from a URI) exclude each other")
            if not self.pvc and not self.fill_from:
                raise UserError.about(
                    "a cluster cannot read the local path {source}: give {pvc} (an existing "
                    "claim holding {model}/<version>/) or {fill_from} gs://... | s3://... "
                    "(where you uploaded it; each pod copies it into its own volume), or a "
                    "gs:// / s3:// base path", source=self.source, model=self.model_name)
            if self.fill_from and not self.fill_from.startswith(options.FILL_SCHEMES):
                raise UserError.about("wants a gs:// or s3:// URI, got {value!r}",
                                      param="fill_from", value=self.fill_from)
            if self.pvc and (self.pvc_size or self.storage_class or self.fill_image):
                raise UserError.about("{pvc} names an existing claim: {pvc_size}, "
                                      "{storage_class} and {fill_image} apply to {fill_from} "
                                      "only")
        elif target == "kserve" and not self.pvc:
            raise UserError.about("KServe cannot read the local path {source}: give {pvc} "
                                  "(an existing claim holding {model}/<version>/) or a gs:// "
                                  "/ s3:// base path", source=self.source, model=self.model_name)
        if target == "k8s" and not self.fill_from and (self.pvc_size or self.storage_class
                                                       or self.fill_image):
            raise UserError.about("{pvc_size}, {storage_class} and {fill_image} describe the "
                                  "claim {fill_from} fills; give {fill_from}")
        if (self.secret_env or self.secret_file) and not self.bucket:
            raise UserError.about("{secret_env} / {secret_file} carry bucket credentials: "
                                  "they need a gs:// or s3:// base path or {fill_from}")

    @property
    def v2(self) -> bool:
        """The Open Inference Protocol: tfdeploy-model-server from our image, probed on
        the protocol's model-free health URLs (every target)."""
        return self.protocol == "v2"

    def _check_protocol(self) -> None:
        """v2 needs tfdeploy-model-server: the official image has no v2, so the user names
        our embedded image (no default: it is built and pushed by the user)."""
        if self.protocol not in (None, "v1", "v2"):
            raise UserError.about("is v1 or v2, got {value!r}", param="protocol",
                                  value=self.protocol)
        if self.v2 and (self.image is None or self.image.split("@")[0].split(":")[0] in (
                default_image(False).split(":")[0], default_image(True).split(":")[0])):
            raise UserError.about("{protocol} v2 runs tfdeploy-model-server, which the "
                                  "official TF Serving image does not have: give {image} "
                                  "(docker/build.sh builds tfdeploy/serving-embedded; push it "
                                  "to your registry)")

    def _check_kserve(self) -> None:
        batcher = self.batcher_max_batch_size is not None or self.batcher_max_latency is not None
        if batcher and (self.transport or "grpc") != "rest":
            raise UserError.about("KServe's batcher only batches REST (v1 protocol) requests: "
                                  "set {transport} to rest")
        for opt, value in (("batcher_max_batch_size", self.batcher_max_batch_size),
                           ("batcher_max_latency", self.batcher_max_latency)):
            if value is not None and value < 1:
                raise UserError("must be at least 1", param=opt)
        if self.protocol == "v2" and batcher:
            raise UserError.about("KServe's batcher speaks the v1 protocol: drop "
                                  "{batcher_max_batch_size} / {batcher_max_latency} with "
                                  "{protocol} v2 (the server batches with its own options)")
        if self.transport not in (None, "grpc", "rest"):
            raise UserError.about("is grpc or rest, got {value!r}", param="transport",
                                  value=self.transport)


def _server_args(spec: ManifestSpec, base_path: str, config: bool, batching: bool) -> list[str]:
    args = [format_flag("port", GRPC), format_flag("rest_api_port", REST),
            format_flag("monitoring_config_file", "/config/monitoring.config")]
    if config:
        args.append(format_flag("model_config_file", "/config/models.config"))
    else:
        args += [format_flag("model_name", spec.model_name),
                 format_flag("model_base_path", base_path)]
    if batching:
        args += _batching_args()
    return args


def _batching_args() -> list[str]:
    return [format_flag("enable_batching", True),
            format_flag("batching_parameters_file", "/config/batching.config")]


def _resources(spec: ManifestSpec, gpu_as: type = int) -> dict[str, Any]:
    """Requests = limits for memory (an OOM kill beats a node under pressure), a CPU
    limit only when asked (throttling slows every request), GPUs as whole devices."""
    resources: dict[str, Any] = {
        "requests": {"cpu": spec.cpu, "memory": spec.memory,
                     "ephemeral-storage": EPHEMERAL["requests"]},
        "limits": {"memory": spec.memory, "ephemeral-storage": EPHEMERAL["limits"]}}
    if spec.cpu_limit:
        resources["limits"]["cpu"] = spec.cpu_limit
    if spec.gpu_count:
        resources["requests"]["nvidia.com/gpu"] = gpu_as(spec.gpu_count)
        resources["limits"]["nvidia.com/gpu"] = gpu_as(spec.gpu_count)
    return resources


CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "privileged": False,
                      "readOnlyRootFilesystem": True, "runAsNonRoot": True,
                      "capabilities": {"drop": ["ALL"]}}
POD_SECURITY = {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
                "seccompProfile": {"type": "RuntimeDefault"}}


def _credentials(spec: ManifestSpec, for_fill: bool = False
                 ) -> tuple[list[dict], list[dict], list[dict], list[dict]]:
    """(env, envFrom, volumes, volumeMounts) carrying the bucket credentials."""
    env: list[dict] = []
    env_from: list[dict] = []
    volumes: list[dict] = []
    mounts: list[dict] = []
    if spec.secret_env:
        env_from.append({"secretRef": {"name": spec.secret_env}})
    if spec.secret_file:
        secret, key = options.parse_secret_file(spec.secret_file)
        path = f"{SECRETS_DIR}/{key}"
        volumes.append({"name": "credentials", "secret": {"secretName": secret,
                                                          "defaultMode": 0o440}})
        mounts.append({"name": "credentials", "mountPath": SECRETS_DIR, "readOnly": True})
        if (spec.bucket or "").startswith("s3://"):
            env.append({"name": "AWS_SHARED_CREDENTIALS_FILE", "value": path})
        else:
            env.append({"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": path})
            if for_fill:  # gcloud does not read GOOGLE_APPLICATION_CREDENTIALS
                env.append({"name": "CLOUDSDK_AUTH_CREDENTIAL_FILE_OVERRIDE", "value": path})
    return env, env_from, volumes, mounts


def _fill_container(spec: ManifestSpec, mounts: list[dict]) -> dict[str, Any]:
    """Copies the uploaded base path into this pod's own volume before TF Serving starts:
    each pod has its own ReadWriteOnce claim, so replicas spread over nodes freely."""
    uri = spec.fill_from or ""
    dest = f"{MODELS_DIR}/{spec.model_name}"
    cli_env: list[dict] = []  # both CLIs write their config under HOME (read-only root)
    # The URI and the destination are the script's positional parameters ("$1", "$2"):
    # the shell never parses them, whatever characters they hold.
    if uri.startswith("gs://"):
        copy = 'gcloud storage rsync --recursive "$1" "$2"'
        cli_env.append({"name": "CLOUDSDK_CONFIG", "value": "/tmp/gcloud"})
    else:
        copy = 'aws s3 sync --no-progress "$1" "$2"'
    env, env_from, _, cred_mounts = _credentials(spec, for_fill=True)
    container: dict[str, Any] = {
        "name": "fill-models",
        "image": spec.fill_image or FILL_IMAGES[uri[:5]],
        "command": ["sh", "-c", f'set -e; mkdir -p "$2"; {copy}; ls "$2"', "fill-models",
                    uri, dest],
        "env": [{"name": "HOME", "value": "/tmp"}, *cli_env, *env],
        "resources": {"requests": {"cpu": "250m", "memory": "512Mi",
                                   "ephemeral-storage": EPHEMERAL["requests"]},
                      "limits": {"memory": "1Gi", "ephemeral-storage": EPHEMERAL["limits"]}},
        "securityContext": dict(CONTAINER_SECURITY),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, *mounts, *cred_mounts],
    }
    if env_from:
        container["envFrom"] = env_from
    return container


def _config_data(spec: ManifestSpec) -> dict[str, str]:
    data = {"monitoring.config": "prometheus_config {\n  enable: true\n"
                                 f'  path: "{METRICS_PATH}"\n}}\n'}
    if spec.model_config_file:
        data["models.config"] = Path(spec.model_config_file).read_text()
    if spec.batching_parameters_file:
        data["batching.config"] = Path(spec.batching_parameters_file).read_text()
    return data


def _pod_spec(spec: ManifestSpec, selector: dict[str, str]) -> dict[str, Any]:
    """The serving pod: model storage, credentials, probes, spread, security."""
    base_path = spec.source if spec.remote else f"{MODELS_DIR}/{spec.model_name}"
    volumes: list[dict[str, Any]] = [
        {"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE}},
        {"name": "config", "configMap": {"name": f"{spec.name}-config"}}]
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"},
                                    {"name": "config", "mountPath": "/config",
                                     "readOnly": True}]
    init_containers = []
    if spec.pvc:
        volumes.append({"name": "models", "persistentVolumeClaim": {"claimName": spec.pvc,
                                                                    "readOnly": True}})
        mounts.append({"name": "models", "mountPath": MODELS_DIR, "readOnly": True})
    elif spec.fill_from:
        claim: dict[str, Any] = {"accessModes": ["ReadWriteOnce"],
                                 "resources": {"requests": {"storage": spec.pvc_size}}}
        if spec.storage_class:
            claim["storageClassName"] = spec.storage_class
        volumes.append({"name": "models", "ephemeral": {"volumeClaimTemplate": {
            "metadata": {"labels": dict(spec.labels)}, "spec": claim}}})
        fill_mount = {"name": "models", "mountPath": MODELS_DIR}
        init_containers.append(_fill_container(spec, [fill_mount]))
        mounts.append({**fill_mount, "readOnly": True})
    env, env_from, cred_volumes, cred_mounts = _credentials(spec)
    volumes += cred_volumes
    if spec.remote:
        mounts += cred_mounts
    else:  # with --fill-from only the initContainer reads the bucket
        env, env_from = [], []
    # v1: the model's status URL (TF Serving has no model-free one); v2: the protocol's
    # model-free health URLs, ready once every model serves
    status = {"httpGet": {"path": V2_READY if spec.v2 else f"/v1/models/{spec.model_name}",
                          "port": "http"}}
    live = {"httpGet": {"path": V2_LIVE, "port": "http"}} if spec.v2 else status
    startup = spec.startup_timeout or (900 if spec.gpu_count else 300)
    container: dict[str, Any] = {
        "name": "tensorflow-serving",
        "image": spec.image,
        "command": ["tfdeploy-model-server" if spec.v2 else "tensorflow_model_server"],
        "args": _server_args(spec, base_path, bool(spec.model_config_file),
                             bool(spec.batching_parameters_file)),
        "ports": [{"name": "grpc", "containerPort": GRPC, "protocol": "TCP"},
                  {"name": "http", "containerPort": REST, "protocol": "TCP"}],
        # Slow (GPU) loads: liveness only starts once the model answered once.
        "startupProbe": {**status, "periodSeconds": 10, "timeoutSeconds": 5,
                         "failureThreshold": math.ceil(startup / 10)},
        "readinessProbe": {**status, "periodSeconds": 5, "timeoutSeconds": 5,
                           "failureThreshold": 2},
        "livenessProbe": {**live, "periodSeconds": 15, "timeoutSeconds": 10,
                          "failureThreshold": 4},
        # Let endpoints drop this pod before TF Serving stops taking requests.
        "lifecycle": {"preStop": {"sleep": {"seconds": 10}}},
        "resources": _resources(spec),
        "securityContext": dict(CONTAINER_SECURITY),
        "volumeMounts": mounts,
    }
    if env:
        container["env"] = env
    if env_from:
        container["envFrom"] = env_from
    pod: dict[str, Any] = {
        "automountServiceAccountToken": False,  # TF Serving never calls the API server
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 60,
        "securityContext": dict(POD_SECURITY),
        "topologySpreadConstraints": [
            {"maxSkew": 1, "topologyKey": key, "whenUnsatisfiable": "ScheduleAnyway",
             "labelSelector": {"matchLabels": dict(selector)},
             "matchLabelKeys": ["pod-template-hash"]}
            for key in ("kubernetes.io/hostname", "topology.kubernetes.io/zone")],
        "containers": [container],
        "volumes": volumes,
    }
    if init_containers:
        pod["initContainers"] = init_containers
    if spec.service_account:
        pod["serviceAccountName"] = spec.service_account
    if spec.gpu_count:
        pod["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists",
                               "effect": "NoSchedule"}]
    if spec.node_selector:
        pod["nodeSelector"] = dict(spec.node_selector)
    return pod


def kubernetes(spec: ManifestSpec) -> list[dict[str, Any]]:
    """ConfigMap, Deployment, Service, PodDisruptionBudget, HPA (when it scales),
    ServiceMonitor (``--service-monitor``)."""
    selector = {"app.kubernetes.io/name": spec.name}
    config_data = _config_data(spec)
    objects: list[dict[str, Any]] = [{"apiVersion": "v1", "kind": "ConfigMap",
                                      "metadata": spec.meta(f"{spec.name}-config"),
                                      "data": config_data}]
    pod = _pod_spec(spec, selector)
    annotations = {"prometheus.io/scrape": "true", "prometheus.io/port": str(REST),
                   "prometheus.io/path": METRICS_PATH}
    deployment_spec: dict[str, Any] = {
        "selector": {"matchLabels": dict(selector)},
        "strategy": {"type": "RollingUpdate",
                     "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "minReadySeconds": 5,
        "template": {"metadata": {"labels": dict(spec.labels), "annotations": annotations},
                     "spec": pod}}
    if not spec.autoscaled:  # with an HPA, a replicas field fights it on every apply
        deployment_spec = {"replicas": spec.replicas, **deployment_spec}
    objects.append({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": spec.meta(),
                    "spec": deployment_spec})
    objects.append({
        "apiVersion": "v1", "kind": "Service", "metadata": spec.meta(),
        "spec": {"selector": dict(selector),
                 "ports": [{"name": "grpc", "port": GRPC, "targetPort": "grpc",
                            "appProtocol": "grpc"},
                           {"name": "http", "port": REST, "targetPort": "http",
                            "appProtocol": "http"}]}})
    objects.append(network_policy(spec, selector))
    objects.append({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": spec.meta(),
        # maxUnavailable, not minAvailable: one replica must still let a node drain.
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": dict(selector)}}})
    if spec.autoscaled:
        metric = spec.scale_metric or "cpu"
        objects.append({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": spec.meta(),
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                        "name": spec.name},
                     "minReplicas": spec.replicas, "maxReplicas": spec.max_replicas,
                     "metrics": [{"type": "Resource", "resource": {
                         "name": metric, "target": {
                             "type": "Utilization",
                             "averageUtilization": spec.scale_target or 70}}}]}})
    if spec.service_monitor:
        monitor: dict[str, Any] = {
            "selector": {"matchLabels": dict(selector)},
            "endpoints": [{"port": "http", "path": METRICS_PATH, "interval": "30s"}]}
        if spec.namespace:
            monitor["namespaceSelector"] = {"matchNames": [spec.namespace]}
        objects.append({"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
                        "metadata": spec.meta(), "spec": monitor})
    return objects


#: Where KServe's storage initializer puts a model, and the ports of its containers.
KSERVE_MODEL_DIR = "/mnt/models"
KSERVE_HTTP, KSERVE_GRPC = 8080, 9000


def _kserve_v2_container(spec: ManifestSpec, uri: str) -> dict[str, Any]:
    """The predictor container of a v2 InferenceService: tfdeploy-model-server (the Open
    Inference Protocol beside TF Serving's API) on the model KServe's storage initializer
    downloads (it does so for a container whose env has STORAGE_URI), probed on the
    protocol's model-free health URLs."""
    grpc = spec.transport == "grpc"
    ready = {"httpGet": {"path": V2_READY, "port": KSERVE_HTTP}}
    live = {"httpGet": {"path": V2_LIVE, "port": KSERVE_HTTP}}
    startup = spec.startup_timeout or (900 if spec.gpu_count else 300)
    return {
        "name": "kserve-container", "image": spec.image,
        "command": ["tfdeploy-model-server"],
        "args": [format_flag("port", KSERVE_GRPC), format_flag("rest_api_port", KSERVE_HTTP),
                 format_flag("model_name", spec.model_name),
                 format_flag("model_base_path", KSERVE_MODEL_DIR)],
        "env": [{"name": "STORAGE_URI", "value": uri}],
        "ports": [{"name": "h2c", "containerPort": KSERVE_GRPC, "protocol": "TCP"}] if grpc
        else [{"containerPort": KSERVE_HTTP, "protocol": "TCP"}],
        "startupProbe": {**ready, "periodSeconds": 10, "timeoutSeconds": 5,
                         "failureThreshold": math.ceil(startup / 10)},
        "readinessProbe": {**ready, "periodSeconds": 5, "timeoutSeconds": 5,
                           "failureThreshold": 2},
        "livenessProbe": {**live, "periodSeconds": 15, "timeoutSeconds": 10,
                          "failureThreshold": 4},
        "resources": _resources(spec, gpu_as=str),
        "securityContext": dict(CONTAINER_SECURITY),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }


def network_policy(spec: ManifestSpec, selector: dict[str, str]) -> dict[str, Any]:
    """Only the serving ports, only from pods labelled ``tfdeploy/client: <name>`` in the
    namespace, plus Prometheus (any namespace) on the REST port for metrics.  Everything
    else (other pods, other ports) is dropped by a CNI that enforces NetworkPolicies;
    kubelet probes come from the node and are not affected."""
    serving = [{"protocol": "TCP", "port": "grpc"}, {"protocol": "TCP", "port": "http"}]
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": spec.meta(),
        "spec": {
            "podSelector": {"matchLabels": dict(selector)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": {CLIENT_LABEL: spec.name}}}],
                 "ports": serving},
                {"from": [{"namespaceSelector": {},
                           "podSelector": {"matchLabels": dict(PROMETHEUS_LABELS)}}],
                 "ports": [{"protocol": "TCP", "port": "http"}]}]}}


def kserve(spec: ManifestSpec) -> list[dict[str, Any]]:
    """An InferenceService with a TensorFlow predictor on the storage URI; with protocol
    v2 a predictor container running tfdeploy-model-server (``_kserve_v2_container``)."""
    from tfdeploy.runtime.docker import serving_version

    uri = spec.source if spec.remote else f"pvc://{spec.pvc}/{spec.model_name}"
    model: dict[str, Any] = {"modelFormat": {"name": "tensorflow"}, "storageUri": uri,
                             "resources": _resources(spec, gpu_as=str),
                             "securityContext": dict(CONTAINER_SECURITY),
                             "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]}
    default = default_image(spec.gpu_count > 0)
    if spec.image == default:
        version = serving_version()
        model["runtimeVersion"] = f"{version}-gpu" if spec.gpu_count else version
    else:  # replaces the runtime's image, as given (a digest stays a digest)
        model["image"] = spec.image
    if spec.transport == "grpc":
        # KServe's TensorFlow runtime serves gRPC on 9000; h2c routes gRPC to it.
        model["ports"] = [{"name": "h2c", "containerPort": 9000, "protocol": "TCP"}]
    predictor: dict[str, Any] = {
        "minReplicas": spec.replicas, "maxReplicas": spec.max_replicas,
        "scaleMetric": spec.scale_metric or "concurrency",
        "scaleTarget": spec.scale_target or (70 if spec.scale_metric in ("cpu", "memory")
                                             else 8),
        "model": model,
        "securityContext": dict(POD_SECURITY),
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE}}]}
    if spec.protocol == "v2":
        del predictor["model"]
        predictor["containers"] = [_kserve_v2_container(spec, uri)]
    if spec.service_account:
        predictor["serviceAccountName"] = spec.service_account
    if spec.batcher_max_batch_size is not None or spec.batcher_max_latency is not None:
        batcher: dict[str, Any] = {}
        if spec.batcher_max_batch_size is not None:
            batcher["maxBatchSize"] = spec.batcher_max_batch_size
        if spec.batcher_max_latency is not None:
            batcher["maxLatency"] = spec.batcher_max_latency
        predictor["batcher"] = batcher
    if spec.gpu_count:
        predictor["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists",
                                     "effect": "NoSchedule"}]
    if spec.node_selector:
        predictor["nodeSelector"] = dict(spec.node_selector)
    meta = spec.meta(spec.kserve_name)
    return [{"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
             "metadata": meta, "spec": {"predictor": predictor}}]


def healthcheck(model_name: str, port: int = REST, v2: bool = False) -> list[str]:
    """Healthy once the REST model status says AVAILABLE (v2: once the model-free
    ``/v2/health/ready`` answers 200).  bash's /dev/tcp, because the official image has
    neither curl nor wget.  The request is one quoted printf format (``%`` doubled), so a
    model name can neither end the quote nor become a directive."""
    import shlex

    path = V2_READY if v2 else f"/v1/models/{model_name}"
    request = f"GET {path} HTTP/1.0\\r\\n\\r\\n".replace("%", "%%")
    check = ("head -n 1 <&3 | grep -q ' 200 '" if v2 else "grep -q AVAILABLE <&3")
    script = (f"exec 3<>/dev/tcp/127.0.0.1/{int(port)} && "
              f"printf {shlex.quote(request)} >&3 && {check}")
    return ["CMD", "bash", "-c", script]


def _bytes(quantity: str) -> int:
    """A Kubernetes quantity (``2Gi``, ``512M``, ``1.5G``) in bytes, for compose, whose
    own size syntax (``2g``) differs."""
    import re

    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", quantity).groups()  # type: ignore[union-attr]
    scale = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
             "E": 10**18, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50,
             "Ei": 2**60, "m": 1e-3}[unit]
    return int(float(number) * scale)


def _compose_text(value: str) -> str:
    """compose interpolates ``$VAR`` in every string of the file: ``$$`` is a literal."""
    return value.replace("$", "$$")


def _bind(source: Path | str, target: str) -> dict[str, Any]:
    """A read-only bind mount in compose's long syntax: a ``:`` or ``,`` in the host path
    cannot split it the way the short ``SRC:DST:ro`` form would."""
    return {"type": "bind", "source": _compose_text(str(Path(source).absolute())),
            "target": target, "read_only": True}


def compose(spec: ManifestSpec) -> dict[str, Any]:
    """N replicas of the serving image on the local base path (read-only), each with its
    own ports on ``host``: replica i listens on grpc_port + 2i and rest_port + 2i."""
    if spec.remote:
        raise UserError("compose needs a local base path (TF Serving in compose cannot read "
                        f"{spec.source.split('://')[0]}:// without credentials set up)")
    services = {}
    assert spec.grpc_port is not None and spec.rest_port is not None
    startup = spec.startup_timeout or (900 if spec.gpu_count else 300)
    for i in range(spec.replicas):
        volumes = [_bind(spec.source, f"{MODELS_DIR}/{spec.model_name}")]
        service: dict[str, Any] = {
            "image": spec.image,
            "environment": {"MODEL_NAME": spec.model_name},
            "volumes": volumes,
            "ports": [f"{spec.host}:{spec.grpc_port + 2 * i}:{GRPC}",
                      f"{spec.host}:{spec.rest_port + 2 * i}:{REST}"],
            "restart": "unless-stopped",
            "healthcheck": {"test": healthcheck(spec.model_name, v2=spec.v2),
                            "interval": "10s",
                            "timeout": "5s", "retries": 3,
                            "start_period": f"{startup}s"},
            "stop_grace_period": "30s",  # SIGTERM drains in-flight requests
            "read_only": True,
            "tmpfs": [f"/tmp:size={_bytes(TMP_SIZE)},mode=1777"],
            "user": CONTAINER_USER,
            "mem_limit": _bytes(spec.memory or DEFAULTS["memory"]),
            "pids_limit": PIDS_LIMIT,
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges:true"],
            "labels": {"tfdeploy.managed": "compose", "tfdeploy.replica": str(i + 1)},
        }
        if spec.batching_parameters_file:
            volumes.append(_bind(spec.batching_parameters_file, "/config/batching.config"))
            service["command"] = _batching_args()
        if spec.gpu_count:
            service["deploy"] = {"resources": {"reservations": {"devices": [
                {"driver": "nvidia", "count": spec.gpus or "all", "capabilities": ["gpu"]}]}}}
        services[f"{spec.name}-{i + 1}"] = service
    return {"services": services}


def endpoints(spec: ManifestSpec, transport: str = "grpc") -> list[str]:
    port = spec.grpc_port if transport == "grpc" else spec.rest_port
    assert port is not None
    return [f"{spec.host}:{port + 2 * i}" for i in range(spec.replicas)]


def _plain_dumper():
    import yaml

    class PlainDumper(yaml.SafeDumper):
        """No &anchors/*aliases: kubectl and humans read repeated blocks more easily."""

        def ignore_aliases(self, data) -> bool:
            return True

    def text(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
        """Config files in ConfigMaps as readable ``|`` blocks, not escaped one-liners."""
        style = "|" if "\n" in data and not data.endswith((" ", "\t")) else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)

    PlainDumper.add_representer(str, text)
    return PlainDumper


def write(target: str, spec: ManifestSpec, out_dir: Path) -> list[Path]:
    """Write the target's files into ``out_dir`` (atomically each); returns their paths.
    ``spec`` must have been resolved for ``target``."""
    import os
    import tempfile

    import yaml

    _PlainDumper = _plain_dumper()  # noqa: N806
    if target == "k8s":
        files = {f"{spec.name}.k8s.yaml": canary.kubernetes(spec, kubernetes(spec))}
    elif target == "kserve":
        files = {f"{spec.name}.kserve.yaml": canary.kserve(spec, kserve(spec))}
    elif target == "compose":
        files = {"compose.yaml": [compose(spec)]}
    else:
        raise UserError(f"unknown target {target!r} ({', '.join(options.TARGETS)})")
    out_dir.mkdir(parents=True, exist_ok=True)
    umask = os.umask(0o022)  # read it (set, then restored at once)
    os.umask(umask)
    written = []
    for name, docs in files.items():
        text = "# generated by tfdeploy manifest; apply as is or adapt\n" + yaml.dump_all(
            docs, Dumper=_PlainDumper, sort_keys=False, default_flow_style=False)
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        # mkstemp's 0600 would keep the files from CI users and kubectl in containers:
        # the mode a plain write would give
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, out_dir / name)
        written.append(out_dir / name)
    return written


def generate(target: str, spec: ManifestSpec, out_dir: Path) -> dict[str, Any]:
    """Resolve ``spec`` for ``target`` and write its files.  Returns what was done: the
    ``files``, the ``image``, the ``next_steps`` to run (upload, apply, compose up), and
    for compose the replicas' ``grpc_endpoints`` / ``rest_endpoints`` and ``up``."""
    import shlex

    from tfdeploy.deploy.composecmd import up_hint

    spec.resolve(target)
    # compose bind mounts SOURCE, --fill-from tells the user to upload it: both need it.
    if (not spec.remote and (target == "compose" or spec.fill_from)
            and not Path(spec.source).is_dir()):
        raise UserError(f"{spec.source}: no such base path (export first, or give a gs:// "
                        "or s3:// URI)")
    files = write(target, spec, out_dir)
    payload: dict[str, Any] = {"target": target, "files": [str(f) for f in files],
                               "image": spec.image}
    steps = payload["next_steps"] = []
    if target == "compose":
        payload["grpc_endpoints"] = endpoints(spec, "grpc")
        payload["rest_endpoints"] = endpoints(spec, "rest")
        payload["up"] = up_hint(str(files[0]))
        steps.append(f"then: {payload['up']} && tfdeploy predict IMAGES --server "
                     f"{','.join(payload['grpc_endpoints'])}")
        return payload
    if spec.fill_from:
        upload = ("gcloud storage rsync --recursive" if spec.fill_from.startswith("gs://")
                  else "aws s3 sync")
        steps.append(f"upload first: {upload} {shlex.quote(spec.source)} "
                     f"{shlex.quote(spec.fill_from)}")
    elif spec.pvc and not spec.remote:
        steps.append(f"claim {spec.pvc} must hold {spec.model_name}/<version>/ "
                     "(README: Scaling out)")
    steps.append(f"then: kubectl apply -f {shlex.quote(str(files[0]))}")
    steps += canary.next_steps(spec, target, files[0])
    return payload


def summary(payload: dict[str, Any]) -> str:
    """``generate``'s result for a person: the files written, then the next steps."""
    return "\n".join([f"wrote {f}" for f in payload["files"]] + payload["next_steps"])
