"""Version policy: which of the versions on disk a model should serve (aspired versions).

Mirrors ``ModelVersionPolicy`` of ModelServerConfig: ``latest { num_versions }`` (the
default, with 1), ``all {}``, ``specific { versions: ... }``.
"""

from __future__ import annotations

from collections.abc import Iterable


def aspired_versions(policy, available: Iterable[int]) -> set[int]:
    """``policy`` is a FileSystemStoragePathSourceConfig.ServableVersionPolicy message."""
    on_disk = sorted(set(available))
    which = policy.WhichOneof("policy_choice") if policy is not None else None
    if which == "all":
        return set(on_disk)
    if which == "specific":
        return set(on_disk) & set(policy.specific.versions)
    n = policy.latest.num_versions if which == "latest" and policy.latest.num_versions else 1
    return set(on_disk[-n:])


def describe(policy) -> str:
    which = policy.WhichOneof("policy_choice") if policy is not None else None
    if which == "all":
        return "all"
    if which == "specific":
        return f"specific {sorted(policy.specific.versions)}"
    n = policy.latest.num_versions if which == "latest" and policy.latest.num_versions else 1
    return f"latest {n}"
