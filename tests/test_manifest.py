"""`tfdeploy manifest`: Kubernetes objects against the Kubernetes 1.30 schemas (strict:
an unknown field fails), the InferenceService through the KServe SDK's models, kubectl
client dry-run where kubectl can work, and every option a target cannot honour refused.
(Compose files run for real in test_scaleout.py.)"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, run_cli

K8S_VERSION = "1.30.0"
KSERVE_PY = ROOT / ".venv-kserve" / "bin" / "python"
KSERVE_READY = ROOT / ".venv-kserve" / ".installed"  # written by `make test` once installed
DIGEST_IMAGE = ("registry.example.com/serving/tensorflow-serving@sha256:"
                + "0123456789abcdef" * 4)


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _manifest(*args) -> list[dict]:
    out = json.loads(run_cli("manifest", *args, "--json").stdout)
    (path,) = map(Path, out["files"])
    return _docs(path)


def _validate(objects: list[dict]) -> None:
    """Every core object strictly against the 1.30 schemas.  The ServiceMonitor is a CRD
    the schemas do not know: checked against the Service it must select instead."""
    import kubernetes_validate

    for obj in objects:
        if obj["kind"] == "ServiceMonitor":
            service = next(o for o in objects if o["kind"] == "Service")
            labels = service["metadata"]["labels"]
            spec = obj["spec"]
            assert obj["apiVersion"] == "monitoring.coreos.com/v1"
            assert spec["selector"]["matchLabels"].items() <= labels.items()
            assert {e["port"] for e in spec["endpoints"]} <= {
                p["name"] for p in service["spec"]["ports"]}
            continue
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def _pod(objects: list[dict]) -> dict:
    return next(o for o in objects if o["kind"] == "Deployment")["spec"]["template"]["spec"]


def test_k8s_local_base_path_filled_from_bucket(tmp_path, demo_base):
    config = tmp_path / "models.config"
    config.write_text('model_config_list { config { name: "deeplab" '
                      'base_path: "/models/deeplab" } }')
    batching = tmp_path / "batching.config"
    batching.write_text("max_batch_size { value: 8 }")
    objects = _manifest("-t", "k8s", demo_base, "--replicas", "2", "--fill-from",
                        "s3://bucket/deeplab", "--secret-env", "aws-credentials",
                        "--storage-class", "fast-ssd", "--model-config-file", config,
                        "--batching-parameters-file", batching, "-o", tmp_path / "deploy")
    _validate(objects)
    kinds = [o["kind"] for o in objects]
    assert kinds == ["ConfigMap", "Deployment", "Service", "NetworkPolicy",
                     "PodDisruptionBudget", "HorizontalPodAutoscaler"]
    by_kind = {o["kind"]: o for o in objects}
    assert set(by_kind["ConfigMap"]["data"]) == {"monitoring.config", "models.config",
                                                 "batching.config"}
    deployment = by_kind["Deployment"]
    assert "replicas" not in deployment["spec"], "an HPA owns the replica count"
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1,
                                                               "maxUnavailable": 0}
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"].startswith("tensorflow/serving:")
    assert not container["image"].endswith("-gpu")
    assert "--model_config_file=/config/models.config" in container["args"]
    assert "--batching_parameters_file=/config/batching.config" in container["args"]
    assert "--monitoring_config_file=/config/monitoring.config" in container["args"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/v1/models/deeplab", "port": "http"}
        assert "initialDelaySeconds" not in container[probe]
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    assert {m["mountPath"]: m.get("readOnly", False) for m in container["volumeMounts"]} == {
        "/tmp": False, "/models": True, "/config": True}
    assert "envFrom" not in container  # only the copy reads the bucket
    # each pod's own ReadWriteOnce claim, filled by an initContainer from the bucket
    volume = {v["name"]: v for v in pod["volumes"]}["models"]
    claim = volume["ephemeral"]["volumeClaimTemplate"]["spec"]
    assert claim["accessModes"] == ["ReadWriteOnce"]
    assert claim["storageClassName"] == "fast-ssd"
    (fill,) = pod["initContainers"]
    assert fill["image"].startswith("amazon/aws-cli:")
    # the URI and destination are the script's "$1" and "$2": the shell never parses them
    assert fill["command"][:2] == ["sh", "-c"]
    assert 'aws s3 sync --no-progress "$1" "$2"' in fill["command"][2]
    assert fill["command"][3:] == ["fill-models", "s3://bucket/deeplab", "/models/deeplab"]
    assert fill["envFrom"] == [{"secretRef": {"name": "aws-credentials"}}]
    assert {"name": "models", "mountPath": "/models"} in fill["volumeMounts"]
    spread = pod["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} == {"kubernetes.io/hostname",
                                                  "topology.kubernetes.io/zone"}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "8501"
    assert annotations["prometheus.io/path"] == "/monitoring/prometheus/metrics"
    assert {p["port"] for p in by_kind["Service"]["spec"]["ports"]} == {8500, 8501}
    assert by_kind["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1
    hpa = by_kind["HorizontalPodAutoscaler"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 6)


def test_k8s_gpu_from_bucket_with_credentials(tmp_path):
    objects = _manifest("-t", "k8s", "gs://bucket/models/deeplab", "--gpus", "2",
                        "--node-selector", "cloud.google.com/gke-accelerator=nvidia-l4",
                        "--namespace", "ml", "--service-account", "deeplab-reader",
                        "--secret-file", "gcs-key/sa.json", "--service-monitor",
                        "--image", DIGEST_IMAGE, "--cpu-limit", "4", "--memory", "8Gi",
                        "--scale-metric", "memory", "--scale-target", "80",
                        "-o", tmp_path)
    _validate(objects)
    assert [o["kind"] for o in objects] == ["ConfigMap", "Deployment", "Service",
                                            "NetworkPolicy", "PodDisruptionBudget",
                                            "HorizontalPodAutoscaler", "ServiceMonitor"]
    pod = _pod(objects)
    (container,) = pod["containers"]
    assert container["image"] == DIGEST_IMAGE  # pinned by digest, kept as given
    resources = container["resources"]
    assert resources["limits"] == {"memory": "8Gi", "cpu": "4", "nvidia.com/gpu": 2,
                                   "ephemeral-storage": "1Gi"}
    assert resources["requests"]["nvidia.com/gpu"] == 2
    assert "--model_base_path=gs://bucket/models/deeplab" in container["args"]
    # a GPU load gets longer before liveness may kill it
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 900
    assert pod["serviceAccountName"] == "deeplab-reader"
    assert {"name": "GOOGLE_APPLICATION_CREDENTIALS",
            "value": "/var/run/secrets/tfdeploy/sa.json"} in container["env"]
    secret = {v["name"]: v for v in pod["volumes"]}["credentials"]["secret"]
    assert secret["secretName"] == "gcs-key"
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert "initContainers" not in pod
    assert all(o["metadata"]["namespace"] == "ml" for o in objects)
    hpa = next(o for o in objects if o["kind"] == "HorizontalPodAutoscaler")["spec"]
    assert hpa["metrics"][0]["resource"] == {
        "name": "memory", "target": {"type": "Utilization", "averageUtilization": 80}}
    monitor = objects[-1]["spec"]
    assert monitor["namespaceSelector"] == {"matchNames": ["ml"]}
    assert monitor["endpoints"][0]["path"] == "/monitoring/prometheus/metrics"


def test_k8s_existing_claim_and_fixed_replicas(tmp_path):
    objects = _manifest("-t", "k8s", "models/deeplab", "--pvc", "models-rwx", "--replicas",
                        "3", "--max-replicas", "3", "-o", tmp_path)
    _validate(objects)
    assert [o["kind"] for o in objects] == ["ConfigMap", "Deployment", "Service",
                                            "NetworkPolicy", "PodDisruptionBudget"]
    deployment = objects[1]
    assert deployment["spec"]["replicas"] == 3  # no HPA: the Deployment holds the count
    pod = _pod(objects)
    claim = {v["name"]: v for v in pod["volumes"]}["models"]["persistentVolumeClaim"]
    assert claim == {"claimName": "models-rwx", "readOnly": True}
    assert "--model_base_path=/models/deeplab" in pod["containers"][0]["args"]
    assert "initContainers" not in pod


def test_kubernetes_validation_catches_mistakes():
    """The validator used above does reject broken objects and unknown fields (so passing
    means something)."""
    import kubernetes_validate

    bad = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
           "spec": {"replicas": "two", "selector": {}, "template": {}}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)
    typo = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": "x"}, "spec": {"maxUnavailabel": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, K8S_VERSION, strict=True)


KSERVE_CHECK = """
import json, sys, yaml
import kubernetes.client
import kserve.models
from kserve import ApiClient, V1beta1InferenceService
# KServe's models refer to Kubernetes types (V1ObjectMeta, V1ResourceRequirements) that
# its deserializer looks up in kserve.models only; point it at kubernetes.client too.
# The Kubernetes models also spell containers "Dict[str, str]" where KServe's deserializer
# expects "dict(str, str)".
kserve.models.__getattr__ = lambda name: getattr(kubernetes.client, name)
_orig = ApiClient._ApiClient__deserialize
def _deserialize(self, data, klass):
    if isinstance(klass, str) and klass.startswith("Dict["):
        klass = "dict(" + klass[5:-1] + ")"
    elif isinstance(klass, str) and klass.startswith("List["):
        klass = "list[" + klass[5:-1] + "]"
    return _orig(self, data, klass)
ApiClient._ApiClient__deserialize = _deserialize
class Response:
    def __init__(self, obj): self.data = json.dumps(obj)
client = ApiClient()
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if not doc:
        continue
    isvc = client.deserialize(Response(doc), "V1beta1InferenceService")
    assert isinstance(isvc, V1beta1InferenceService)
    back = client.sanitize_for_serialization(isvc)
    def kept(ours, theirs):  # every field we wrote survives the SDK's typed round trip
        if isinstance(ours, dict):
            return isinstance(theirs, dict) and all(
                k in theirs and kept(v, theirs[k]) for k, v in ours.items())
        if isinstance(ours, list):
            return (isinstance(theirs, list) and len(ours) == len(theirs)
                    and all(kept(a, b) for a, b in zip(ours, theirs)))
        return ours == theirs
    assert kept(doc, back), (doc, back)
    p = isvc.spec.predictor
    print(json.dumps({"uri": p.model.storage_uri, "version": p.model.runtime_version,
                      "image": p.model.image, "sa": p.service_account_name,
                      "ports": [port.container_port for port in p.model.ports or []],
                      "metric": p.scale_metric, "target": p.scale_target,
                      "batcher": p.batcher and p.batcher.max_batch_size}))
"""


def _kserve_sdk(path: str) -> dict:
    proc = subprocess.run([str(KSERVE_PY), "-c", KSERVE_CHECK, path],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.skipif(not KSERVE_READY.exists(),
                    reason="KServe SDK venv (.venv-kserve) missing: `make test` creates it")
def test_kserve_inference_service_round_trips_through_sdk(tmp_path):
    out = json.loads(run_cli("manifest", "-t", "kserve", "s3://bucket/deeplab", "--gpu",
                             "--service-account", "kserve-s3", "--scale-metric", "rps",
                             "--scale-target", "20", "--node-selector", "pool=gpu",
                             "-o", tmp_path / "a", "--json").stdout)
    got = _kserve_sdk(out["files"][0])
    assert got["uri"] == "s3://bucket/deeplab"
    assert got["version"].endswith("-gpu") and got["image"] is None
    assert got["sa"] == "kserve-s3"
    assert got["ports"] == [9000]  # gRPC (h2c) by default
    assert (got["metric"], got["target"]) == ("rps", 20)

    out = json.loads(run_cli("manifest", "-t", "kserve", "models/deeplab", "--pvc",
                             "models-rwx", "--transport", "rest", "--batcher-max-batch-size",
                             "16", "--batcher-max-latency", "50", "--image", DIGEST_IMAGE,
                             "-o", tmp_path / "b", "--json").stdout)
    got = _kserve_sdk(out["files"][0])
    assert got["uri"] == "pvc://models-rwx/deeplab"
    assert got["image"] == DIGEST_IMAGE and got["version"] is None
    assert got["ports"] == [] and got["batcher"] == 16
    assert (got["metric"], got["target"]) == ("concurrency", 8)


def test_kubectl_client_dry_run(tmp_path):
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl is not installed")
    out = json.loads(run_cli("manifest", "-t", "k8s", "gs://b/deeplab", "--secret-env", "gcs",
                             "-o", tmp_path, "--json").stdout)
    proc = subprocess.run([kubectl, "apply", "--dry-run=client", "--validate=false", "-f",
                           out["files"][0]], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0 and ("connection refused" in proc.stderr
                                 or "couldn't get current server" in proc.stderr
                                 or "the server could not find" in proc.stderr
                                 or "no configuration" in proc.stderr.lower()):
        pytest.skip("kubectl needs an API server to map kinds to resources even with "
                    "--dry-run=client, and none answers here: "
                    + proc.stderr.strip().splitlines()[-1][:160])
    assert proc.returncode == 0, proc.stderr
    for line in ("deployment.apps/deeplab-serving created (dry run)",
                 "poddisruptionbudget.policy/deeplab-serving created (dry run)"):
        assert line in proc.stdout


@pytest.mark.parametrize("args,message", [
    (["-t", "compose", "gs://b/x"], "local base path"),
    (["-t", "compose", "{missing}"], "no such base path"),
    (["-t", "k8s", "{missing}", "--fill-from", "gs://b/x"], "no such base path"),
    (["-t", "k8s", "models/deeplab"], "--pvc (an existing claim"),
    (["-t", "kserve", "models/deeplab"], "--pvc (an existing claim"),
    (["-t", "k8s", "gs://b/x", "--node-selector", "oops"], "KEY=VALUE"),
    (["-t", "k8s", "gs://b/x", "--pvc", "claim"], "--pvc: is for a local base path"),
    (["-t", "k8s", "models/deeplab", "--fill-from", "https://x/y"], "gs:// or s3://"),
    (["-t", "k8s", "models/deeplab", "--pvc", "c", "--secret-env", "s"], "need a gs://"),
    (["-t", "k8s", "gs://b/x", "--secret-env", "Bad_Name"], "not a valid Kubernetes name"),
    (["-t", "k8s", "gs://b/x", "--grpc-port", "9000"], "cannot honour --grpc-port"),
    (["-t", "k8s", "gs://b/x", "--transport", "rest"], "cannot honour --transport"),
    (["-t", "k8s", "gs://b/x", "--scale-metric", "rps"], "custom metrics"),
    (["-t", "k8s", "gs://b/x", "--max-replicas", "1", "--scale-target", "50"],
     "turns it off"),
    (["-t", "k8s", "gs://b/x", "--batcher-max-batch-size", "8"], "--batching-parameters"),
    (["-t", "kserve", "gs://b/x", "--model-config-file", "{config}"], "one InferenceService"),
    (["-t", "kserve", "gs://b/x", "--batching-parameters-file", "{config}"],
     "KServe's batcher"),
    (["-t", "kserve", "gs://b/x", "--secret-env", "s"], "use --service-account"),
    (["-t", "kserve", "gs://b/x", "--startup-timeout", "600"], "cannot honour"),
    (["-t", "kserve", "gs://b/x", "--batcher-max-batch-size", "8"], "set --transport to rest"),
    (["-t", "compose", "{base}", "--service-account", "sa"], "cannot honour"),
    (["-t", "compose", "{base}", "--cpu", "2"], "cannot honour --cpu"),
    (["-t", "compose", "{base}", "--max-replicas", "4"], "cannot honour --max-replicas"),
    (["-t", "compose", "{base}", "--model-config-file", "{config}"], "host paths"),
])
def test_options_a_target_cannot_honour_are_errors(tmp_path, demo_base, args, message):
    config = tmp_path / "models.config"
    config.write_text("model_config_list {}")
    values = {"missing": tmp_path / "none", "config": config, "base": demo_base}
    args = [a.format(**values) for a in args]
    proc = run_cli("manifest", *args, "-o", tmp_path / "deploy", check=False)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "deploy").exists()


def test_every_option_is_known_to_the_target_table():
    """A new manifest option must be placed in options.SUPPORT (or be universal), so no
    target can drop it silently."""
    from tfdeploy.cli.manifest import manifest
    from tfdeploy.deploy.options import SUPPORT

    universal = {"target", "source", "replicas", "gpu", "gpus", "image", "model_name",
                 "output_dir", "as_json"}
    params = {p.name for p in manifest.params}
    assert params - universal == set(SUPPORT)


def test_compose_hint_names_the_installed_command(tmp_path, demo_base):
    v2 = subprocess.run(["docker", "compose", "version"], capture_output=True,
                        timeout=30).returncode == 0 if shutil.which("docker") else False
    expected = ("docker compose -f" if v2 else "docker-compose -f"
                if shutil.which("docker-compose") else "install docker compose")
    proc = run_cli("manifest", "-t", "compose", demo_base, "-o", tmp_path)
    assert f"then: {expected}" in proc.stdout, proc.stdout
    compose = yaml.safe_load((tmp_path / "compose.yaml").read_text())
    assert "version" not in compose
    run_cli("manifest", "-t", "compose", demo_base, "--startup-timeout", "1200", "-o",
            tmp_path)
    (service,) = yaml.safe_load((tmp_path / "compose.yaml").read_text())["services"].values()
    assert service["healthcheck"]["start_period"] == "1200s"
    assert service["healthcheck"]["test"][:2] == ["CMD", "bash"]


def test_every_target_is_hardened(tmp_path, demo_base):
    """Issue 24: bounded writable /tmp and ephemeral storage, a NetworkPolicy admitting
    only labelled clients and Prometheus to the serving ports, KServe's predictor locked
    down like the Deployment, compose containers non-root with memory and pids limits."""
    objects = _manifest("-t", "k8s", demo_base, "--fill-from", "gs://bucket/deeplab",
                        "-o", tmp_path / "k8s")
    _validate(objects)
    pod = _pod(objects)
    assert {v["name"]: v for v in pod["volumes"]}["tmp"] == {
        "name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}
    for container in pod["containers"] + pod["initContainers"]:
        resources = container["resources"]
        assert resources["limits"]["ephemeral-storage"] == "1Gi", container["name"]
        assert resources["requests"]["ephemeral-storage"] == "256Mi"
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    (policy,) = [o for o in objects if o["kind"] == "NetworkPolicy"]
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "deeplab-serving"}
    assert spec["policyTypes"] == ["Ingress"]
    clients, prometheus = spec["ingress"]
    assert clients["from"] == [{"podSelector": {"matchLabels": {
        "tfdeploy/client": "deeplab-serving"}}}]
    assert [p["port"] for p in clients["ports"]] == ["grpc", "http"]
    assert prometheus["from"][0]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "prometheus"}
    assert [p["port"] for p in prometheus["ports"]] == ["http"]

    (isvc,) = _manifest("-t", "kserve", "gs://bucket/deeplab", "-o", tmp_path / "kserve")
    predictor = isvc["spec"]["predictor"]
    assert predictor["securityContext"]["runAsNonRoot"] is True
    assert predictor["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = predictor["model"]["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert predictor["model"]["resources"]["limits"]["ephemeral-storage"] == "1Gi"
    assert predictor["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}]

    run_cli("manifest", "-t", "compose", demo_base, "--memory", "3Gi", "-o", tmp_path / "c")
    (service,) = yaml.safe_load((tmp_path / "c" / "compose.yaml").read_text())[
        "services"].values()
    assert service["user"] == "1000:1000"
    assert service["mem_limit"] == 3 * 2**30 and service["pids_limit"] == 4096
    assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
    assert service["security_opt"] == ["no-new-privileges:true"]
    assert service["tmpfs"] == [f"/tmp:size={256 * 2**20},mode=1777"]
    assert service["volumes"][0] == {"type": "bind", "source": str(demo_base),
                                     "target": "/models/deeplab", "read_only": True}
