"""Everything an export can be refused for that does not need TensorFlow, checked first.

Importing TensorFlow takes seconds; a typo in a path or a version number should be
reported at once, not after that.  Nothing here imports TensorFlow.
"""

from __future__ import annotations

from pathlib import Path

from tfdeploy.errors import UserError
from tfdeploy.export import checkpoint as ckpt
from tfdeploy.export import source_precision, sources
from tfdeploy.export.config import parse_max_pixels
from tfdeploy.export.precision import check_precision
from tfdeploy.tfs.versions import MAX_VERSION, next_version


def check_version(version: int | None, base: Path) -> int:
    """The version number an export writes: ``version``, or the next after the highest
    under ``base``.  Refused outside 1..2^63-1: TF Serving's version numbers are int64, so
    a server could not report a larger one in a status response."""
    number = version if version is not None else next_version(base)
    if not 1 <= number <= MAX_VERSION:
        what = f"got {number}" if version is not None else (
            f"the next after the highest under {base} would be {number}")
        raise UserError(f"must be between 1 and {MAX_VERSION} (2^63-1, the largest version "
                        f"a model server can number), {what}", param="version")
    return number


def check_inputs(checkpoint: str | Path, output: str | Path, version: int | None,
                 precision: str, min_agreement: float, probes: list[str | Path],
                 max_pixels: int | str) -> int:
    """Refuse unusable export arguments with ``UserError`` before TensorFlow is imported;
    returns ``max_pixels`` as a pixel count."""
    try:
        pixels = parse_max_pixels(max_pixels)
    except ValueError as exc:
        raise UserError(str(exc), param="max_pixels") from None
    base = Path(output).absolute()
    if base.exists() and not base.is_dir():
        raise UserError(f"{base}: output base path exists and is not a directory")
    check_version(version, base)
    check_precision(precision)
    if not 0.0 <= min_agreement <= 1.0:
        raise UserError(f"must be between 0% and 100%, got {min_agreement:.2%}",
                        param="min_agreement")
    for item in map(Path, probes):
        if not item.exists():
            raise UserError(f"{item}: no such probe image or directory", param="probes")
    source_precision.check(sources.kind_of(checkpoint), precision)
    if sources.kind_of(checkpoint) == sources.CHECKPOINT:
        ckpt.locate(checkpoint)  # no such checkpoint, no config.json / data.json
    return pixels
