"""Where the client sends requests when the user does not say: the server that
``tfdeploy serve`` started (from its state file), else TF Serving's default ports."""

from __future__ import annotations

DEFAULT_PORTS = {"grpc": 8500, "rest": 8501}


def resolve_endpoints(server: tuple[str, ...] | list[str], transport: str) -> list[str]:
    """``--server`` values (repeatable, comma-separated) -> ``host:port`` list."""
    out: list[str] = []
    for item in server:
        for part in item.split(","):
            part = part.strip()
            if part:
                out.append(part if ":" in part.rsplit("]", 1)[-1]
                           else f"{part}:{DEFAULT_PORTS[transport]}")
    if out:
        return out
    from tfdeploy.runtime.state import default_endpoint

    return [default_endpoint(transport) or f"localhost:{DEFAULT_PORTS[transport]}"]
