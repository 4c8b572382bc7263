"""`tfdeploy manifest --canary-percent`: the k8s canary Deployment and KServe's
canaryTrafficPercent, checked strictly against the Kubernetes 1.30 schemas and (where
`make test` installed it) the KServe SDK, as tests/test_manifest.py checks the rest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import run_cli
from test_manifest import KSERVE_READY, _kserve_sdk, _validate


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """A local base path with versions 1, 2 and 3 (a manifest only lists them)."""
    base = tmp_path / "deeplab"
    for v in (1, 2, 3):
        (base / str(v)).mkdir(parents=True)
        (base / str(v) / "saved_model.pb").write_bytes(b"")
    return base


def manifest(*args) -> tuple[list[dict], dict]:
    out = json.loads(run_cli("manifest", *args, "--json").stdout)
    docs = [d for d in yaml.safe_load_all(Path(out["files"][0]).read_text()) if d]
    return docs, out


def pinned_version(config_text: str) -> int:
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = text_format.Parse(config_text, model_server_config_pb2.ModelServerConfig())
    (model,) = config.model_config_list.config
    assert model.name == "deeplab" and model.base_path == "/models/deeplab"
    (version,) = model.model_version_policy.specific.versions
    return version


def test_k8s_canary_is_a_second_deployment_behind_the_same_service(tmp_path, base):
    docs, out = manifest("-t", "k8s", base, "--pvc", "models", "--replicas", "9",
                         "--max-replicas", "9", "--canary-percent", "10", "-o", tmp_path)
    _validate(docs)
    kinds = [d["kind"] for d in docs]
    assert kinds.count("Deployment") == 2
    stable, canary = (d for d in docs if d["kind"] == "Deployment")
    assert (stable["metadata"]["name"], canary["metadata"]["name"]) == (
        "deeplab-serving", "deeplab-serving-canary")
    assert (stable["spec"]["replicas"], canary["spec"]["replicas"]) == (9, 1)
    service = next(d for d in docs if d["kind"] == "Service")
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    selectors = []
    for deployment, track, version in ((stable, "stable", 2), (canary, "canary", 3)):
        template = deployment["spec"]["template"]
        labels = template["metadata"]["labels"]
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items() and selector["tfdeploy/track"] == track
        # the one Service reaches the pods of both
        assert service["spec"]["selector"].items() <= labels.items()
        args = template["spec"]["containers"][0]["args"]
        assert f"--model_config_file=/config/{track}.config" in args
        assert not any(a.startswith(("--model_name", "--model_base_path")) for a in args)
        assert pinned_version(config[f"{track}.config"]) == version
        assert template["metadata"]["annotations"]["tfdeploy/serves-version"] == str(version)
        selectors.append(selector)
    # neither Deployment selects the other's pods
    assert selectors[0]["tfdeploy/track"] != selectors[1]["tfdeploy/track"]
    steps = "\n".join(out["next_steps"])
    assert "version 3 on 1 pod(s), version 2 on 9: about 10%" in steps
    assert "rollback: kubectl delete deployment deeplab-serving-canary" in steps
    assert "--stable-version 3" in steps


def test_k8s_without_canary_keeps_one_unpinned_deployment_on_the_stable_track(tmp_path,
                                                                              base):
    docs, _ = manifest("-t", "k8s", base, "--pvc", "models", "-o", tmp_path / "a")
    _validate(docs)
    (deployment,) = (d for d in docs if d["kind"] == "Deployment")
    # the track is in the selector from the start: a selector cannot change later
    assert deployment["spec"]["selector"]["matchLabels"]["tfdeploy/track"] == "stable"
    assert "--model_name=deeplab" in deployment["spec"]["template"]["spec"]["containers"][0][
        "args"]
    # promote: the stable Deployment pinned to the canary's version, no canary left
    docs, _ = manifest("-t", "k8s", base, "--pvc", "models", "--stable-version", "3",
                       "-o", tmp_path / "b")
    _validate(docs)
    (deployment,) = (d for d in docs if d["kind"] == "Deployment")
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    assert pinned_version(config["stable.config"]) == 3 and "canary.config" not in config


def test_canary_from_a_bucket_needs_its_versions(tmp_path):
    proc = run_cli("manifest", "-t", "k8s", "gs://b/deeplab", "--canary-percent", "20",
                   "-o", tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: give --canary-version: the version the canary "
                                   "serves (read from a local SOURCE only)")
    docs, _ = manifest("-t", "k8s", "gs://b/deeplab", "--canary-percent", "20",
                       "--canary-version", "7", "--stable-version", "6", "-o", tmp_path)
    _validate(docs)
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    assert 'base_path: "gs://b/deeplab"' in config["canary.config"]
    assert "versions: 7" in config["canary.config"]


@pytest.mark.parametrize(("args", "message"), [
    (["-t", "compose", "{base}", "--canary-percent", "10"], "compose has no traffic split"),
    (["-t", "kserve", "s3://b/x", "--canary-percent", "10", "--canary-version", "2"],
     "kserve cannot honour --canary-version: KServe's canary is the InferenceService's new "
     "revision"),
    (["-t", "k8s", "{base}", "--pvc", "c", "--canary-percent", "10", "--canary-version",
      "9"], "has no version 9 (it has: 1, 2, 3)"),
    (["-t", "k8s", "{base}", "--pvc", "c", "--canary-percent", "10", "--canary-version",
      "2", "--stable-version", "2"], "are the same version"),
    (["-t", "k8s", "{base}", "--pvc", "c", "--canary-version", "2"],
     "--canary-version is the version of a canary: give --canary-percent"),
    (["-t", "k8s", "{base}", "--pvc", "c", "--canary-percent", "100"], "1<=x<=99"),
])
def test_canary_options_that_cannot_work_are_errors(tmp_path, base, args, message):
    proc = run_cli("manifest", *[a.format(base=base) for a in args], "-o", tmp_path,
                   check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not list(tmp_path.glob("*.yaml"))


def test_kserve_canary_traffic_percent(tmp_path, base):
    docs, out = manifest("-t", "kserve", base, "--pvc", "models", "--canary-percent", "25",
                         "-o", tmp_path)
    (isvc,) = docs
    assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == 25
    assert isvc["metadata"]["annotations"]["tfdeploy/canary-version"] == "3"
    steps = "\n".join(out["next_steps"])
    assert '"canaryTrafficPercent":100' in steps and '"canaryTrafficPercent":0' in steps
    if KSERVE_READY.exists():  # every field we wrote survives the SDK's typed models
        _kserve_sdk(out["files"][0])
