"""Canary rollouts in the generated manifests (``--canary-percent``).

Kubernetes: a second Deployment, ``<name>-canary``, behind the same Service.  Each
Deployment pins its version with a model config in the ConfigMap
(``model_version_policy { specific { versions: N } }``): the stable one serves
``--stable-version``, the canary ``--canary-version``; otherwise both would serve the
newest version of the shared base path and there would be nothing to compare.  The
Service spreads connections over the pods of both, so the traffic share is the replica
ratio.  The Deployments' selectors carry a ``tfdeploy/track`` label (stable / canary) so
they never claim each other's pods.

KServe: ``canaryTrafficPercent`` on the predictor.  KServe keeps the last revision that
took all traffic and sends N% to the new one (what this apply creates); that revision
serves the newest version under ``storageUri`` when its pods start.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tfdeploy.errors import UserError
from tfdeploy.tfs.flags import format_flag

if TYPE_CHECKING:
    from tfdeploy.deploy.manifests import ManifestSpec

TRACK = "tfdeploy/track"
CANARY_VERSION_ANNOTATION = "tfdeploy/canary-version"
SERVES_VERSION = "tfdeploy/serves-version"


def check(spec: ManifestSpec, target: str) -> None:
    """Values of the canary options, and the versions each Deployment pins (the newest
    two of a local SOURCE unless given; a bucket cannot be listed here, so both are
    required with a gs:// / s3:// SOURCE)."""
    if spec.canary_percent is None:
        if spec.canary_version is not None:
            raise UserError.about("{canary_version} is the version of a canary: give "
                                  "{canary_percent}")
        if spec.stable_version is None:
            return
    elif not 1 <= spec.canary_percent <= 99:
        raise UserError("is a share of the traffic, 1-99", param="canary_percent")
    if target != "k8s":
        return
    if spec.model_config_file:
        raise UserError.about("{canary_percent} / {stable_version} pin each Deployment's "
                              "version with a model config of its own; they cannot be "
                              "combined with {model_config_file}")
    found: list[int] = []
    if not spec.remote:
        from tfdeploy.tfs.versions import versions

        found = sorted(versions(Path(spec.source))) if Path(spec.source).is_dir() else []
    if spec.canary_percent is not None and spec.canary_version is None:
        if not found:
            raise UserError.about("give {canary_version}: the version the canary serves "
                                  "(read from a local SOURCE only)")
        spec.canary_version = found[-1]
    if spec.stable_version is None:
        older = [v for v in found if v < spec.canary_version]
        if not older:
            raise UserError.about("give {stable_version}: the version the stable "
                                  "Deployment keeps serving (a local SOURCE's next older "
                                  "version is the default)")
        spec.stable_version = older[-1]
    for opt, version in (("canary_version", spec.canary_version),
                         ("stable_version", spec.stable_version)):
        if version is None:
            continue
        if version < 1:
            raise UserError("must be at least 1", param=opt)
        if found and version not in found:
            raise UserError.about("{source} has no version {version} (it has: {have})",
                                  param=opt, source=spec.source, version=version,
                                  have=", ".join(map(str, found)))
    if spec.canary_version == spec.stable_version:
        raise UserError.about("{canary_version} and {stable_version} are the same version")


def canary_replicas(spec: ManifestSpec) -> int:
    """Canary pods for ``canary_percent`` of the traffic next to ``replicas`` stable
    ones (at least one: a share rounded to 0 pods is no canary)."""
    percent = spec.canary_percent or 0
    return max(1, round(spec.replicas * percent / (100 - percent)))


def _model_config(spec: ManifestSpec, version: int) -> str:
    base_path = spec.source if spec.remote else f"/models/{spec.model_name}"
    return ("model_config_list {\n  config {\n"
            f'    name: "{spec.model_name}"\n    base_path: "{base_path}"\n'
            '    model_platform: "tensorflow"\n'
            f"    model_version_policy {{ specific {{ versions: {version} }} }}\n"
            "  }\n}\n")


def _track(deployment: dict[str, Any], track: str) -> None:
    """Label the Deployment's pods with their track, in its selector too: two
    Deployments behind one Service must not select each other's pods."""
    spec = deployment["spec"]
    deployment["metadata"]["labels"][TRACK] = track
    spec["selector"]["matchLabels"][TRACK] = track
    spec["template"]["metadata"]["labels"][TRACK] = track
    for constraint in spec["template"]["spec"].get("topologySpreadConstraints", []):
        constraint["labelSelector"]["matchLabels"][TRACK] = track


def _pin(deployment: dict[str, Any], config_key: str, version: int) -> None:
    """Point TF Serving at the ConfigMap key ``config_key`` (one pinned version) instead
    of --model_name/--model_base_path (the newest version).  The version is also a pod
    annotation: the args stay the same when only the version changes, and without a
    changed pod template ``kubectl apply`` would roll nothing out (TF Serving reads the
    config only at start)."""
    template = deployment["spec"]["template"]
    template["metadata"].setdefault("annotations", {})[SERVES_VERSION] = str(version)
    for container in template["spec"]["containers"]:
        args = [a for a in container["args"]
                if not a.startswith(("--model_name=", "--model_base_path="))]
        container["args"] = args + [format_flag("model_config_file", f"/config/{config_key}")]


def kubernetes(spec: ManifestSpec, objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``objects`` (the plain Kubernetes set) with the Deployment on the ``stable`` track
    (always: a Deployment's selector cannot change later, when a canary is added), pinned
    to ``stable_version`` when given, and with ``canary_percent`` a canary Deployment on
    ``canary_version`` after it."""
    config = next(o for o in objects if o["kind"] == "ConfigMap")
    stable = next(o for o in objects if o["kind"] == "Deployment")
    canary = copy.deepcopy(stable)
    _track(stable, "stable")
    if spec.stable_version is not None:
        config["data"]["stable.config"] = _model_config(spec, spec.stable_version)
        _pin(stable, "stable.config", spec.stable_version)
    if spec.canary_percent is None:
        return objects
    config["data"]["canary.config"] = _model_config(spec, spec.canary_version)
    _track(canary, "canary")
    _pin(canary, "canary.config", spec.canary_version)
    canary["metadata"]["name"] = f"{spec.name}-canary"
    canary["spec"] = {"replicas": canary_replicas(spec),
                      **{k: v for k, v in canary["spec"].items() if k != "replicas"}}
    objects.insert(objects.index(stable) + 1, canary)
    return objects


def kserve(spec: ManifestSpec, objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The InferenceService with ``canaryTrafficPercent``, and the version a local
    SOURCE will give the new revision recorded as an annotation."""
    if spec.canary_percent is None:
        return objects
    service = objects[0]
    service["spec"]["predictor"]["canaryTrafficPercent"] = spec.canary_percent
    if not spec.remote and Path(spec.source).is_dir():
        from tfdeploy.tfs.versions import versions

        found = sorted(versions(Path(spec.source)))
        if found:
            service["metadata"].setdefault("annotations", {})[
                CANARY_VERSION_ANNOTATION] = str(found[-1])
    return objects


def next_steps(spec: ManifestSpec, target: str, file: Path) -> list[str]:
    """How to watch, promote and roll back the canary this manifest starts (paths
    shell-quoted: they are commands to paste)."""
    import shlex

    if spec.canary_percent is None:
        return []
    if target == "kserve":
        name = spec.model_name.lower().replace("_", "-")
        ns = f" -n {spec.namespace}" if spec.namespace else ""
        return [f"canary: {spec.canary_percent}% of requests go to the new revision "
                f"(kubectl get isvc {name}{ns} shows both)",
                f"promote: kubectl patch isvc {name}{ns} --type merge -p "
                "'{\"spec\":{\"predictor\":{\"canaryTrafficPercent\":100}}}'",
                f"rollback: kubectl patch isvc {name}{ns} --type merge -p "
                "'{\"spec\":{\"predictor\":{\"canaryTrafficPercent\":0}}}'"]
    ns = f" -n {spec.namespace}" if spec.namespace else ""
    canary = canary_replicas(spec)
    share = 100 * canary / (canary + spec.replicas)
    return [f"canary: version {spec.canary_version} on {canary} pod(s), version "
            f"{spec.stable_version} on {spec.replicas}: about {share:.0f}% of connections "
            "(gRPC keeps a connection: spread clients, or use a mesh for exact shares)",
            f"promote: tfdeploy manifest -t k8s {shlex.quote(spec.source)} --stable-version "
            f"{spec.canary_version} ... && kubectl apply -f {shlex.quote(str(file))} && "
            "kubectl delete "
            f"deployment {spec.name}-canary{ns}",
            f"rollback: kubectl delete deployment {spec.name}-canary{ns}"]
