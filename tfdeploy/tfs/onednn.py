"""TensorFlow's oneDNN kernels: which CPUs get them by default, which graphs need them.

An int8 export runs on TensorFlow's oneDNN int8 kernels (``QuantizedConv2DWithBias...``,
``_FusedQuantizedConv2D``, ``_QuantizedMatMul``): their plain CPU kernels are placeholders
that only oneDNN's graph rewrite replaces, so with oneDNN off such a graph loads and then
fails every run ("Missing 0-th output").  Whether oneDNN is on is decided once per
process, when TensorFlow first asks, from ``TF_ENABLE_ONEDNN_OPTS``; unset, the pip
TensorFlow on Linux turns it on only on CPUs with neural-network features (the flags in
``DEFAULT_ON_FLAGS``).  So on an AVX2-only CPU an int8 export needs the variable set
before TensorFlow starts.  TF Serving's ``--config=mkl`` builds (the ``-mkl`` images)
keep oneDNN on whatever the CPU, unless ``TF_DISABLE_MKL=1``.

TensorFlow-free: the CLI, the exporter and the embedded server decide here, before they
import TensorFlow, whether to ask for oneDNN.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path

from tfdeploy.tfs.saved_model import SavedModelError, meta_graph, read_saved_model

#: The environment variable TensorFlow reads once, at its first oneDNN question.
ENV = "TF_ENABLE_ONEDNN_OPTS"

#: CPU flags (``/proc/cpuinfo``) with which TensorFlow on Linux turns oneDNN on by default.
DEFAULT_ON_FLAGS = ("avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8",
                    "amx_bf16")

#: Op name prefixes whose CPU kernels exist only as oneDNN's (the int8 convolutions and
#: matmuls an int8 export uses; TensorFlow's reference ``QuantizedConv2D`` and
#: ``QuantizeV2``/``Dequantize`` run without it).
ONEDNN_OP_PREFIXES = ("QuantizedConv2DWith", "QuantizedConv2DAnd", "QuantizedConv2DPerChannel",
                      "QuantizedDepthwiseConv2D", "QuantizedMatMulWith", "_FusedQuantized",
                      "_QuantizedMatMul", "_QuantizedConv2D", "_QuantizedBatchMatMul")

#: What a user does about it, in every message that says oneDNN is off.
HOW_TO_TURN_ON = (f"start it with {ENV}=1 (TensorFlow turns its oneDNN kernels on by default "
                  "only on CPUs with AVX512_VNNI, AVX512_BF16, AVX_VNNI or AMX)")


def parse_cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags every CPU in a ``/proc/cpuinfo`` text has (x86 ``flags`` lines,
    ARM ``Features`` lines).  A flag only some cores report does not count: TF schedules
    on all of them."""
    sets = [set(m.group(1).split())
            for m in re.finditer(r"^(?:flags|Features)\s*:\s*(.*)$", cpuinfo, re.M)]
    return frozenset(set.intersection(*sets)) if sets else frozenset()


def cpu_flags(path: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """This machine's CPU flags; empty where there is no ``/proc/cpuinfo`` (not Linux)."""
    try:
        return parse_cpu_flags(Path(path).read_text(errors="replace"))
    except OSError:
        return frozenset()


def on_by_default(flags: frozenset[str]) -> bool:
    """Whether TensorFlow turns oneDNN on with ``TF_ENABLE_ONEDNN_OPTS`` unset (Linux
    x86; elsewhere tfdeploy does not try to know, and answers True)."""
    if not sys.platform.startswith("linux") or not flags:
        return True
    return any(f in flags for f in DEFAULT_ON_FLAGS)


def needs_onednn(op_names: Iterable[str]) -> list[str]:
    """The ops among ``op_names`` that run only on oneDNN kernels, sorted."""
    return sorted({op for op in op_names if op.startswith(ONEDNN_OP_PREFIXES)})


def graph_ops(meta_graph_def) -> set[str]:
    """Every op a MetaGraphDef runs: its graph's nodes and its functions' (a TF2
    SavedModel's computation lives in the function library)."""
    graph = meta_graph_def.graph_def
    ops = {n.op for n in graph.node}
    for fn in graph.library.function:
        ops.update(n.op for n in fn.node_def)
    return ops


def version_needs_onednn(version_dir: Path, tags: Iterable[str] = ("serve",)) -> list[str]:
    """The oneDNN-only ops of one version's SavedModel (MetaGraph ``tags``); [] when it has
    none or cannot be read (its load will say why)."""
    try:
        _, message = read_saved_model(Path(version_dir))
    except (SavedModelError, OSError):
        return []
    mg = meta_graph(message, tags)
    return needs_onednn(graph_ops(mg)) if mg is not None else []


def setting() -> bool | None:
    """``TF_ENABLE_ONEDNN_OPTS`` as TensorFlow reads it: True, False, or None when unset
    (or unreadable, where TensorFlow keeps its default)."""
    value = os.environ.get(ENV)
    if value is None:
        return None
    return {"1": True, "true": True, "0": False, "false": False}.get(value.strip().lower())


def turn_on_if_unset() -> bool:
    """Ask for oneDNN in this process (``TF_ENABLE_ONEDNN_OPTS=1``) unless the variable is
    set; True when it is (now) asked for.  Takes effect only before TensorFlow's first
    oneDNN question, i.e. before ``import tensorflow``."""
    os.environ.setdefault(ENV, "1")
    return setting() is True


def base_paths(model_base_path: str = "", model_config_file: str = "") -> list[Path]:
    """The model base paths a server is started on (the config file wins, as in
    tensorflow_model_server); [] for a config file that does not parse (the server's own
    reading of it says why)."""
    if not model_config_file:
        return [Path(model_base_path)] if model_base_path else []
    from google.protobuf import text_format

    from tfdeploy.tfs import protos

    config = protos.module("tensorflow_serving.config.model_server_config_pb2")
    message = config.ModelServerConfig()
    try:
        text_format.Parse(Path(model_config_file).read_text(), message)
    except (OSError, UnicodeDecodeError, text_format.ParseError):
        return []
    return [Path(m.base_path) for m in message.model_config_list.config if m.base_path]


def versions_needing_onednn(paths: Iterable[Path],
                            tags: Iterable[str] = ("serve",)) -> dict[Path, list[str]]:
    """Version directory -> its oneDNN-only ops, for every numbered version under
    ``paths`` that has any."""
    found = {}
    for base in paths:
        try:
            versions = [d for d in Path(base).iterdir() if d.is_dir() and d.name.isdigit()]
        except OSError:
            continue
        for version in sorted(versions):
            if ops := version_needs_onednn(version, tags):
                found[version] = ops
    return found
