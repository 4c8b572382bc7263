"""`tfdeploy manifest`: Kubernetes objects against the Kubernetes schemas, the
InferenceService through the KServe SDK's models, kubectl client dry-run where a cluster
answers.  (Compose files run for real in test_scaleout.py.)"""

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


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _validate(objects: list[dict]) -> None:
    import kubernetes_validate

    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_k8s_local_base_path_with_configs(tmp_path, demo_base):
    config = tmp_path / "models.config"
    config.write_text('model_config_list { config { name: "deeplab" '
                      'base_path: "/models/deeplab" } }')
    batching = tmp_path / "batching.config"
    batching.write_text("max_batch_size { value: 8 }")
    out = json.loads(run_cli("manifest", "-t", "k8s", str(demo_base), "--replicas", "2",
                             "--model-config-file", str(config), "--batching-parameters-file",
                             str(batching), "-o", str(tmp_path / "deploy"), "--json").stdout)
    (path,) = map(Path, out["files"])
    objects = _docs(path)
    _validate(objects)
    kinds = [o["kind"] for o in objects]
    assert kinds == ["ConfigMap", "PersistentVolumeClaim", "Deployment", "Service",
                     "HorizontalPodAutoscaler"]
    by_kind = {o["kind"]: o for o in objects}
    assert set(by_kind["ConfigMap"]["data"]) == {"models.config", "batching.config"}
    deployment = by_kind["Deployment"]
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"].startswith("tensorflow/serving:")
    assert not container["image"].endswith("-gpu")
    assert "--model_config_file=/config/models.config" in container["args"]
    assert "--batching_parameters_file=/config/batching.config" in container["args"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/v1/models/deeplab", "port": "http"}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert {m["mountPath"]: m.get("readOnly", False) for m in container["volumeMounts"]} == {
        "/tmp": False, "/models/deeplab": True, "/config": True}
    claim = {v["name"]: v for v in pod["volumes"]}["models"]["persistentVolumeClaim"]
    assert claim == {"claimName": "deeplab-serving-models", "readOnly": True}
    assert {p["port"] for p in by_kind["Service"]["spec"]["ports"]} == {8500, 8501}
    hpa = by_kind["HorizontalPodAutoscaler"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 6)


def test_k8s_gpu_from_bucket(tmp_path):
    out = json.loads(run_cli("manifest", "-t", "k8s", "gs://bucket/models/deeplab", "--gpu",
                             "--node-selector", "cloud.google.com/gke-accelerator=nvidia-l4",
                             "--namespace", "ml", "-o", str(tmp_path), "--json").stdout)
    objects = _docs(Path(out["files"][0]))
    _validate(objects)
    assert [o["kind"] for o in objects] == ["Deployment", "Service", "HorizontalPodAutoscaler"]
    pod = objects[0]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"].endswith("-gpu")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "--model_base_path=gs://bucket/models/deeplab" in container["args"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert all(o["metadata"]["namespace"] == "ml" for o in objects)


def test_kubernetes_validation_catches_mistakes():
    """The validator used above does reject a broken object (so passing means something)."""
    import kubernetes_validate

    bad = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
           "spec": {"replicas": "two", "selector": {}, "template": {}}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


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
    isvc = client.deserialize(Response(doc), "V1beta1InferenceService")
    assert isinstance(isvc, V1beta1InferenceService)
    back = client.sanitize_for_serialization(isvc)
    def kept(ours, theirs):  # every field we wrote survives the SDK's typed round trip
        if isinstance(ours, dict):
            return isinstance(theirs, dict) and all(
                k in theirs and kept(v, theirs[k]) for k, v in ours.items())
        return ours == theirs
    assert kept(doc, back), (doc, back)
    print(isvc.spec.predictor.model.storage_uri, isvc.spec.predictor.model.runtime_version)
"""


@pytest.mark.skipif(not KSERVE_READY.exists(),
                    reason="KServe SDK venv (.venv-kserve) missing: `make test` creates it")
@pytest.mark.parametrize("source,gpu", [("s3://bucket/deeplab", True),
                                        ("models/deeplab", False)])
def test_kserve_inference_service_loads_in_sdk(tmp_path, source, gpu):
    args = ["--gpu"] if gpu else []
    out = json.loads(run_cli("manifest", "-t", "kserve", source, *args, "-o", str(tmp_path),
                             "--json").stdout)
    proc = subprocess.run([str(KSERVE_PY), "-c", KSERVE_CHECK, out["files"][0]],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    uri, version = proc.stdout.split()
    assert uri == (source if gpu else "pvc://deeplab-serving-models/deeplab")
    assert version.endswith("-gpu") == gpu


def test_kubectl_client_dry_run(tmp_path):
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl is not installed")
    out = json.loads(run_cli("manifest", "-t", "k8s", "gs://b/deeplab", "-o", str(tmp_path),
                             "--json").stdout)
    proc = subprocess.run([kubectl, "apply", "--dry-run=client", "--validate=false", "-f",
                           out["files"][0]], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0 and ("connection refused" in proc.stderr
                                 or "couldn't get current server" in proc.stderr
                                 or "the server could not find" in proc.stderr
                                 or "no configuration" in proc.stderr.lower()):
        pytest.skip("kubectl has no cluster to map resource kinds against")
    assert proc.returncode == 0, proc.stderr
    assert "deployment.apps/deeplab-serving created (dry run)" in proc.stdout


def test_manifest_errors(tmp_path):
    proc = run_cli("manifest", "-t", "compose", "gs://b/x", "-o", str(tmp_path), check=False)
    assert proc.returncode == 2 and "local base path" in proc.stderr
    proc = run_cli("manifest", "-t", "k8s", str(tmp_path / "none"), check=False)
    assert proc.returncode == 2 and "no such base path" in proc.stderr
    proc = run_cli("manifest", "-t", "k8s", "gs://b/x", "--node-selector", "oops",
                   check=False)
    assert proc.returncode == 2 and "KEY=VALUE" in proc.stderr
