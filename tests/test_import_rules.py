"""The house rules of the package layout, checked on the source and at run time.

- ``tfdeploy/tfs`` (TF Serving's contract) imports nothing of ours but itself and
  ``tfdeploy.errors``; ``tfs`` and ``client`` never import TensorFlow.
- ``client``, ``serving`` and ``export`` are peers on top of ``tfs``: none imports another.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tfdeploy"
PEERS = ("client", "serving", "export")


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at any depth (lazy imports inside functions count)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def files(sub: str) -> list[Path]:
    found = sorted((PACKAGE / sub).rglob("*.py"))
    assert found, f"no files under tfdeploy/{sub}"
    return found


def test_imports_of_sees_lazy_imports(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text("import os\n\ndef f():\n    from tfdeploy.client import pool\n")
    assert {"os", "tfdeploy.client", "tfdeploy.client.pool"} <= imports_of(sample)


@pytest.mark.parametrize("path", files("tfs"), ids=lambda p: p.name)
def test_tfs_imports_only_itself(path):
    ours = {m for m in imports_of(path) if m.startswith("tfdeploy")}
    bad = sorted(m for m in ours if not m.startswith(("tfdeploy.tfs", "tfdeploy.errors")))
    assert not bad, f"tfdeploy/tfs/{path.name} imports {bad}"


@pytest.mark.parametrize("path", files("tfs") + files("client"),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_tensorflow_in_tfs_and_client(path):
    bad = sorted(m for m in imports_of(path)
                 if m == "tensorflow" or m.startswith("tensorflow.")
                 or m == "tfdeploy.tfimport")
    assert not bad, f"{path} imports {bad}"


@pytest.mark.parametrize("peer", PEERS)
def test_peers_do_not_import_each_other(peer):
    others = tuple(f"tfdeploy.{p}" for p in PEERS if p != peer)
    bad = {str(path.relative_to(PACKAGE)): sorted(m for m in imports_of(path)
                                                   if m.startswith(others))
           for path in files(peer)}
    assert not {k: v for k, v in bad.items() if v}, bad


def run_python(code: str) -> str:
    """stdout of ``code`` run in a fresh interpreter (nothing imported yet)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_client_loads_no_tensorflow_at_run_time():
    """Importing every client module and building requests leaves TensorFlow unloaded
    (the protobuf modules come in under a placeholder package that is removed again)."""
    code = (
        "import sys, importlib, pkgutil, tfdeploy.client as c, tfdeploy.tfs as t\n"
        "for pkg in (c, t):\n"
        "    for m in pkgutil.iter_modules(pkg.__path__):\n"
        "        importlib.import_module(f'{pkg.__name__}.{m.name}')\n"
        "from tfdeploy.tfs import requests\n"
        "requests.encoded_image_request('m', [b'x'])\n"
        "requests.metadata_request('m')\n"
        "import numpy as np\n"
        "requests.predict_request('m', 's', {'x': np.zeros(2, np.float32)})\n"
        "print(sorted(k for k in sys.modules if k == 'tensorflow' "
        "or k.startswith('tensorflow.python')))\n")
    assert run_python(code) == "[]"


def test_encoded_image_path_needs_no_numpy():
    code = ("import sys\nfrom tfdeploy.tfs import requests, json_tensors\n"
            "r = requests.encoded_image_request('m', [b'\\x89PNG'])\n"
            "assert r.inputs['image_bytes'].string_val[0] == b'\\x89PNG'\n"
            "json_tensors.encoded_image_body('serving_default', [b'a'])\n"
            "print('numpy' in sys.modules)\n")
    assert run_python(code) == "False"


def _module_graph() -> dict[str, set[str]]:
    """``{module: modules of ours it imports}`` for every module of the package, lazy
    imports included (``from tfdeploy.x import y`` counts as importing ``tfdeploy.x.y``
    when that is a module)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return {name: {m for m in imports_of(path) if m in modules and m != name}
            for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle (its modules in order, the first repeated at the end), or []."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return []


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) == []


def test_serving_has_no_import_circle():
    """One Servable protocol, one loader per platform behind it: ``servable`` (the
    protocol and the SavedModel platform), ``tflite`` and ``loader`` (which picks one)
    import one way only, as does every other module of the server."""
    graph = {k: {m for m in v if m.startswith("tfdeploy.serving")}
             for k, v in _module_graph().items() if k.startswith("tfdeploy.serving")}
    assert _cycle(graph) == []
    assert "tfdeploy.serving.tflite" not in graph["tfdeploy.serving.servable"]
