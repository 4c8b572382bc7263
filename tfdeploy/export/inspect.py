"""Describe SavedModel versions (tags, signatures, dtypes, shapes) without importing TF.

Reads ``saved_model.pb`` or the seed's text ``saved_model.pbtxt`` through the lean
protobuf loader, so ``tfdeploy inspect`` answers in a fraction of a second.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tfdeploy.errors import UserError
from tfdeploy.export.tilespec import tiling_text
from tfdeploy.tfs.saved_model import read_saved_model, shape_text, signature
from tfdeploy.tfs.versions import METADATA_FILE, WARMUP_FILE, saved_model_file, versions


def describe_version(version_dir: Path) -> dict[str, Any]:
    path, message = read_saved_model(version_dir)
    graphs = []
    for mg in message.meta_graphs:
        sigs = {}
        for key in sorted(mg.signature_def):
            if key.startswith("__"):  # e.g. __saved_model_init_op
                continue
            sig = signature(mg.signature_def[key])
            sigs[key] = {
                "method_name": sig.method_name,
                "inputs": {k: {"dtype": d, "shape": s} for k, (d, s) in sig.inputs.items()},
                "outputs": {k: {"dtype": d, "shape": s} for k, (d, s) in sig.outputs.items()},
            }
        graphs.append({"tags": sorted(mg.meta_info_def.tags), "signatures": sigs})
    size = sum(f.stat().st_size for f in version_dir.rglob("*") if f.is_file())
    meta_file = version_dir / METADATA_FILE
    exported_by = json.loads(meta_file.read_text()) if meta_file.is_file() else None
    return {
        "path": str(version_dir),
        "file": path.name,
        "file_bytes": path.stat().st_size,
        "size_bytes": size,
        "warmup": (version_dir / WARMUP_FILE).is_file(),
        # Exports from before --precision existed were float32; others (e.g. the seed's
        # TF1 exports) say nothing, and we do not guess.
        "precision": (exported_by or {}).get("precision", "float32") if exported_by else None,
        "exported_by": exported_by,
        # Which model servers can run it, where that is narrower than "any" (int8).
        "servers": (exported_by or {}).get("servers"),
        # What was exported: checkpoint, frozen_graph, keras or saved_model (exports from
        # before other sources existed were checkpoints).
        "source": (exported_by or {}).get("source", "checkpoint") if exported_by else None,
        # class index -> name as the export stores them (its class_names signature serves
        # the same list); None where the export names none
        "class_names": (exported_by or {}).get("class_names"),
        # --tile: {"tile", "overlap", "batch", "max_pixels"}; None for whole images.
        "tiling": (exported_by or {}).get("tiling"),
        "meta_graphs": graphs,
    }


def describe(path: str | Path) -> dict[str, Any]:
    """A base path (all versions) or one version directory."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: no such file or directory")
    if saved_model_file(p) is not None:
        base, found = p.parent, {int(p.name) if p.name.isdigit() else 0: p}
    else:
        base, found = p, versions(p)
        if not found:
            raise UserError(f"{p}: no SavedModel versions (numeric directories with "
                            "saved_model.pb) here")
    return {"base_path": str(base.absolute()),
            "versions": {str(v): describe_version(d) for v, d in found.items()}}


def labels_text(names: list[str], limit: int = 8) -> str:
    """``21 classes: background, aeroplane, ... tvmonitor``."""
    shown = names if len(names) <= limit else [*names[:limit - 1], "...", names[-1]]
    return f"{len(names)} classes: {', '.join(shown)}"


#: How inspect names each source kind.
SOURCE_NAMES = {"checkpoint": "checkpoint", "frozen_graph": "model-zoo / frozen graph",
                "keras": "Keras model", "saved_model": "SavedModel"}


def source_text(kind: str, config: dict[str, Any], precision: str | None = None,
                checkpoint_format: str | None = None) -> str:
    """One line on what was exported: its kind (a seed or tfdeploy checkpoint, a model-zoo
    or other frozen graph, a Keras model, a SavedModel), how a wrapped model is fed and
    what it returns, and its precision where that says something."""
    if kind == "checkpoint":
        fmt = {"seed": "seed (tutorial) checkpoint", "native": "tfdeploy checkpoint"}
        return fmt.get(checkpoint_format or "", f"{checkpoint_format or 'a'} checkpoint")
    parts = [SOURCE_NAMES.get(kind, kind)]
    if config.get("input_tensor"):
        parts.append(f"{config['input_tensor']} ({config.get('input_dtype')}) -> "
                     f"{config.get('output_tensor')}")
    if config.get("preprocess"):
        parts.append(f"preprocess {config['preprocess']}")
    if config.get("input_size"):
        parts.append("input size {}x{}".format(*config["input_size"]))
    if config.get("output"):
        parts.append(f"returns {config['output']}")
    if kind in ("frozen_graph", "saved_model"):
        parts.append("served as made (float32: --precision does not apply to it)")
    elif precision and precision != "float32":
        parts.append(f"computes in {precision} (mixed: float32 weights)")
    return ", ".join(parts)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 50_000 else f"{n / 1e3:.1f} kB"


def render(info: dict[str, Any]) -> str:
    """Readable text, like ``saved_model_cli show --all`` without the noise."""
    lines = [f"base path: {info['base_path']}"]
    for number, v in info["versions"].items():
        origin = v.get("exported_by") or {}
        source = f", from {origin['checkpoint']}" if origin.get("checkpoint") else ""
        precision = f", {v['precision']}" if v.get("precision") else ""
        lines.append(f"version {number}  ({v['file']} {_mb(v['file_bytes'])}, version "
                     f"{_mb(v['size_bytes'])} in all{precision}, "
                     f"warmup {'yes' if v['warmup'] else 'no'}{source})")
        if v.get("source"):
            lines.append("  source: " + source_text(v["source"], origin.get("config") or {},
                                                    v.get("precision"), origin.get("format")))
        if v.get("class_names"):
            lines.append(f"  labels: {labels_text(v['class_names'])}")
        elif v.get("source"):
            lines.append("  labels: none recorded (clients say class N)")
        if v.get("tiling"):
            lines.append(f"  tiling: {tiling_text(v['tiling'])}")
        if v.get("servers"):
            lines.append(f"  servers: {v['servers']}")
        for mg in v["meta_graphs"]:
            lines.append(f"  tags: {', '.join(mg['tags'])}")
            for key, sig in mg["signatures"].items():
                lines.append(f"  signature {key!r}  ({sig['method_name']})")
                for kind in ("inputs", "outputs"):
                    for name, t in sig[kind].items():
                        arrow = "<-" if kind == "inputs" else "->"
                        lines.append(f"    {arrow} {name:<18} {t['dtype']:<8} "
                                     f"{shape_text(t['shape'])}")
    return "\n".join(lines)
