"""Which ``tfdeploy manifest`` options each target can honour, and parsing of the
structured ones.

An option a target cannot carry out is refused with a message naming the option, the
target and what to do instead: a manifest that silently drops ``--secret-env`` or
``--model-config-file`` deploys something other than what the user asked for, and the
difference only shows in production.
"""

from __future__ import annotations

import re
from typing import Any

from tfdeploy.errors import UserError

TARGETS = ("k8s", "kserve", "compose")
REMOTE_SCHEMES = ("gs://", "s3://", "hdfs://", "http://", "https://")
FILL_SCHEMES = ("gs://", "s3://")  # what the copy initContainer knows how to read

# option (ManifestSpec field) -> targets that honour it
SUPPORT: dict[str, tuple[str, ...]] = {
    "max_replicas": ("k8s", "kserve"),
    "pvc": ("k8s", "kserve"),
    "pvc_size": ("k8s",),
    "storage_class": ("k8s",),
    "fill_from": ("k8s",),
    "fill_image": ("k8s",),
    "namespace": ("k8s", "kserve"),
    "node_selector": ("k8s", "kserve"),
    "cpu": ("k8s", "kserve"),
    "cpu_limit": ("k8s", "kserve"),
    "memory": ("k8s", "kserve"),
    "model_config_file": ("k8s",),
    "batching_parameters_file": ("k8s", "compose"),
    "service_account": ("k8s", "kserve"),
    "secret_env": ("k8s",),
    "secret_file": ("k8s",),
    "service_monitor": ("k8s",),
    "startup_timeout": ("k8s", "compose"),
    "scale_metric": ("k8s", "kserve"),
    "scale_target": ("k8s", "kserve"),
    "batcher_max_batch_size": ("kserve",),
    "batcher_max_latency": ("kserve",),
    "transport": ("kserve",),
    "protocol": ("kserve",),
    "grpc_port": ("compose",),
    "rest_port": ("compose",),
    "host": ("compose",),
    "canary_percent": ("k8s", "kserve"),
    "canary_version": ("k8s",),
    "stable_version": ("k8s",),
}

# (option, target) -> what to do instead, where there is something better than "drop it";
# other options are named as {field} (UserError.about spells them for Python or the CLI)
INSTEAD: dict[tuple[str, str], str] = {
    ("model_config_file", "kserve"): "an InferenceService serves one model from its "
    "storageUri; write one InferenceService per model",
    ("model_config_file", "compose"): "its base paths are host paths the containers cannot "
    "see; run one compose file per model",
    ("batching_parameters_file", "kserve"): "use KServe's batcher: {batcher_max_batch_size} "
    "and {batcher_max_latency}",
    ("secret_env", "kserve"): "KServe's storage initializer reads credentials from the "
    "secrets attached to the predictor's service account: use {service_account}",
    ("secret_file", "kserve"): "KServe's storage initializer reads credentials from the "
    "secrets attached to the predictor's service account: use {service_account}",
    ("fill_from", "kserve"): "KServe downloads storageUri itself: give the URI as the source",
    ("secret_env", "compose"): "compose serves a local base path only",
    ("secret_file", "compose"): "compose serves a local base path only",
    ("startup_timeout", "kserve"): "the KServe runtime owns the predictor's probes",
    ("batcher_max_batch_size", "k8s"): "use {batching_parameters_file} (TF Serving's "
    "batching)",
    ("batcher_max_latency", "k8s"): "use {batching_parameters_file} (TF Serving's batching)",
    ("batcher_max_batch_size", "compose"): "use {batching_parameters_file}",
    ("batcher_max_latency", "compose"): "use {batching_parameters_file}",
    ("grpc_port", "k8s"): "the Service always exposes 8500 (gRPC) and 8501 (REST)",
    ("rest_port", "k8s"): "the Service always exposes 8500 (gRPC) and 8501 (REST)",
    ("host", "k8s"): "expose the Service with an Ingress or a LoadBalancer instead",
    ("canary_percent", "compose"): "compose has no traffic split; serve the candidate "
    "beside it and compare with tfdeploy promote --dry-run",
    ("canary_version", "kserve"): "KServe's canary is the InferenceService's new revision: "
    "it serves the newest version under storageUri when its pods start",
    ("stable_version", "kserve"): "KServe keeps the previous revision serving the rest of "
    "the traffic",
}

K8S_SCALE_METRICS = ("cpu", "memory")
KSERVE_SCALE_METRICS = ("concurrency", "rps", "cpu", "memory")


def is_remote(uri: str) -> bool:
    return uri.startswith(REMOTE_SCHEMES)


def check_target_options(target: str, given: dict[str, Any]) -> None:
    """Raise UserError for the first option in ``given`` (field -> value; None, False and
    empty mean "not given") that ``target`` cannot honour."""
    if target not in TARGETS:
        raise UserError.about("unknown {target} {value!r} ({known})", value=target,
                              known=", ".join(TARGETS))
    for field, value in given.items():
        if value is None or value is False or value == {} or value == ():
            continue
        targets = SUPPORT.get(field)
        if targets is None or target in targets:
            continue
        instead = INSTEAD.get((field, target))
        reason = f": {instead}" if instead else " (only {targets} can)"
        raise UserError.about(f"{{target}} {{value}} cannot honour {{{field}}}{reason}",
                              value=target, targets=" and ".join(targets))


def parse_node_selector(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``KEY=VALUE`` items -> a node selector dict."""
    selectors: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError.about("wants KEY=VALUE, got {value!r}", param="node_selector",
                                  value=item)
        selectors[key] = value
    return selectors


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


def check_object_name(option: str, name: str, label: bool = False) -> str:
    """Kubernetes names (secrets, claims, service accounts, namespaces) are lower-case DNS
    names; a typo here would only fail at ``kubectl apply``, so fail now.  ``option`` is
    the ManifestSpec field the name came from."""
    pattern, limit = (_DNS_LABEL, 63) if label else (_DNS_SUBDOMAIN, 253)
    if not pattern.match(name) or len(name) > limit:
        kind = "DNS label" if label else "DNS subdomain name"
        raise UserError.about("{value!r} is not a valid Kubernetes name (a {kind}: lower "
                              "case letters, digits and '-')", param=option, value=name,
                              kind=kind)
    return name


def parse_secret_file(value: str) -> tuple[str, str]:
    """``SECRET[/KEY]`` -> (secret name, key in it; default ``key.json``)."""
    name, _, key = value.partition("/")
    key = key or "key.json"
    check_object_name("secret_file", name)
    if not _SECRET_KEY.match(key):
        raise UserError.about("{value!r} is not a valid secret key", param="secret_file",
                              value=key)
    return name, key


def check_scale(target: str, metric: str | None, value: int | None) -> None:
    allowed = K8S_SCALE_METRICS if target == "k8s" else KSERVE_SCALE_METRICS
    if metric is not None and metric not in allowed:
        extra = (" (concurrency and rps need a custom metrics adapter; use {target} kserve)"
                 if target == "k8s" else "")
        raise UserError.about("{target} {value} scales on {allowed}, not {metric!r}" + extra,
                              value=target, allowed=", ".join(allowed), metric=metric)
    if value is not None and value < 1:
        raise UserError("must be at least 1", param="scale_target")
    if metric in ("cpu", "memory") and value is not None and value > 100:
        raise UserError.about("for {metric} is a utilization percentage (1-100)",
                              param="scale_target", metric=metric)
