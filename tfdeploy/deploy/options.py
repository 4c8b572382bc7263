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
    "memory": ("k8s", "kserve", "compose"),
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
    "protocol": ("kserve", "k8s", "compose"),
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
    name, slash, key = value.partition("/")
    if slash and not key:
        raise UserError.about("{value!r} names no key after '/' (SECRET or SECRET/KEY)",
                              param="secret_file", value=value)
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


# -- values that end up in generated files ------------------------------------------------
# Every value a user gives reaches a YAML scalar, a container's argument list or a printed
# shell command.  YAML and argument lists cannot be broken out of, but a value can still
# mean something else than the user thinks (a ``$`` that compose interpolates, a name the
# API server refuses at apply time), so each value is checked for what it is.

_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
# A docker image reference: [registry[:port]/]path[:tag][@sha256:digest]
_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE = re.compile(rf"^(?:[A-Za-z0-9.-]+(?::[0-9]+)?/)?{_PATH_PART}(?:/{_PATH_PART})*"
                    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$")
# Bucket URIs the copy initContainer reads: a bucket name, then an object prefix of
# characters that need no quoting anywhere (no spaces, quotes, ``$`` or globs).
_BUCKET_URI = re.compile(r"^(gs|s3)://[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?(/[A-Za-z0-9._~+=@,/-]*)?$")


def check_model_name(name: str) -> str:
    from tfdeploy.tfs.names import model_name_problem

    problem = model_name_problem(name)
    if problem:
        raise UserError(problem, param="model_name")
    return name


def check_service_name(model_name: str, name: str) -> str:
    """Objects are named after the model (``<model>-serving``), and a Service name is a
    DNS-1035 label: lower case, a letter first, at most 63 characters."""
    if not _DNS_1035.match(name) or len(name) > 63:
        raise UserError.about("{value!r} would name the Kubernetes objects {name!r}, which "
                              "the API server refuses (a DNS-1035 label: a letter first, "
                              "then letters, digits and '-', at most 63 characters)",
                              param="model_name", value=model_name, name=name)
    return name


def check_quantity(option: str, value: str) -> str:
    """Kubernetes resource quantities: ``500m``, ``2``, ``2Gi``, ``512M``."""
    if not _QUANTITY.match(value):
        raise UserError.about("{value!r} is not a Kubernetes quantity (like 500m, 2, 2Gi)",
                              param=option, value=value)
    return value


def check_image(option: str, value: str) -> str:
    if not _IMAGE.match(value) or len(value) > 512:
        raise UserError.about("{value!r} is not an image reference "
                              "([registry/]name[:tag][@sha256:digest])", param=option,
                              value=value)
    return value


def check_bucket_uri(option: str, value: str) -> str:
    if not _BUCKET_URI.match(value):
        raise UserError.about("{value!r} is not a gs:// or s3:// URI (a bucket name, then a "
                              "path of letters, digits and ._~+=@,/-)", param=option,
                              value=value)
    return value


def check_source_uri(value: str) -> str:
    """A remote base path TF Serving reads itself: a URI with a host, nothing that is not
    a URI character (no spaces, quotes, control characters)."""
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    if (not parts.netloc or re.search(r"[^A-Za-z0-9._~:/?#\[\]@!&()*+,;=%-]", value)
            or "$" in value):
        raise UserError.about("{value!r} is not a URI TF Serving can read (scheme://bucket/"
                              "path, URI characters only)", param="source", value=value)
    return value


def check_label(option: str, key: str, value: str) -> None:
    """A node selector entry: a label key ([prefix/]name) and value as Kubernetes takes."""
    prefix, _, name = key.rpartition("/")
    ok = (bool(_LABEL_NAME.match(name)) and len(name) <= 63
          and (not prefix or (_DNS_SUBDOMAIN.match(prefix) and len(prefix) <= 253))
          and bool(_LABEL_VALUE.match(value)) and len(value) <= 63)
    if not ok:
        raise UserError.about("{value!r} is not a Kubernetes label KEY=VALUE", param=option,
                              value=f"{key}={value}")


def check_host(value: str) -> str:
    """compose publishes ports on an IP address (docker takes no host names there)."""
    import ipaddress

    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise UserError.about("{value!r} is not an IP address", param="host",
                              value=value) from None
    return value
