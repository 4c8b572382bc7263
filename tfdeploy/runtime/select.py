"""Choosing a runtime (``--runtime auto``) and finding the one a recorded server uses."""

from __future__ import annotations

from tfdeploy.errors import UserError
from tfdeploy.runtime.base import Runtime, ServeSpec
from tfdeploy.runtime.docker import DockerRuntime
from tfdeploy.runtime.process import EmbeddedRuntime, NativeRuntime

RUNTIMES = ("docker", "native", "embedded")


def get(name: str) -> Runtime:
    if name == "docker":
        return DockerRuntime()
    if name == "native":
        return NativeRuntime()
    if name == "embedded":
        return EmbeddedRuntime()
    raise UserError(f"unknown runtime {name!r} (choose from {', '.join(RUNTIMES)})")


def choose(spec: ServeSpec, wanted: str = "auto") -> tuple[Runtime, str]:
    """(runtime, why).  auto: docker when an engine answers and the image is present or
    pullable, else native when tensorflow_model_server is on PATH, else embedded; only
    embedded when a model config asks for request logging (``logging_config``)."""
    if wanted in ("docker", "native"):
        spec.check_request_logging(wanted)  # before looking for an engine or a binary
    if wanted != "auto":
        runtime = get(wanted)
        if isinstance(runtime, DockerRuntime):
            runtime.client()  # an engine must answer; a missing image is pulled at start
        else:
            ok, why = runtime.available(spec)
            if not ok:
                raise UserError(f"{wanted}: {why}", param="runtime")
        return runtime, "asked for with --runtime"
    reasons = []
    logged = spec.logged_models()
    for name in RUNTIMES:
        if logged and name in ("docker", "native"):
            reasons.append(f"not {name}: tensorflow_model_server does not log requests "
                           f"(logging_config of {', '.join(logged)})")
            continue
        runtime = get(name)
        ok, why = runtime.available(spec)
        if ok:
            chosen = "; ".join([*reasons, f"{name}: {why}" if why else f"{name} works here"])
            return runtime, chosen
        reasons.append(f"not {name}: {why}")
    raise UserError("no runtime can serve this: " + "; ".join(reasons))
