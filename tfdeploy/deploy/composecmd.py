"""Which compose command is installed: ``docker compose`` (the v2 plugin) or
``docker-compose`` (v1, still the only one on some machines, such as our CI).

The generated file is valid for both; the printed hint must name one that runs here.
"""

from __future__ import annotations

import shutil
import subprocess


def compose_command() -> list[str] | None:
    """``["docker", "compose"]`` when the v2 plugin answers, else ``["docker-compose"]``
    when v1 is on PATH, else None."""
    docker = shutil.which("docker")
    if docker:
        try:
            proc = subprocess.run([docker, "compose", "version"], capture_output=True,
                                  text=True, timeout=20)
            if proc.returncode == 0:
                return ["docker", "compose"]
        except (OSError, subprocess.TimeoutExpired):
            pass
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def up_hint(compose_file: str) -> str:
    """The command that starts ``compose_file`` with the compose installed here."""
    import shlex

    compose_file = shlex.quote(compose_file)
    cmd = compose_command()
    if cmd is None:
        return (f"install docker compose (v2 plugin) or docker-compose (v1), then: "
                f"docker compose -f {compose_file} up -d")
    return f"{' '.join(cmd)} -f {compose_file} up -d"
