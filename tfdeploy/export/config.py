"""Architecture description of a DeepLab-v3 network.

One dataclass describes every variant we build: the seed's resnet_v2_50/101 models (read
from the seed's ``data.json``) and smaller configurations such as the demo (stored in our
native ``config.json``).  Keeping it free of TensorFlow lets ``inspect`` and the CLI read
configurations without paying for a TF import.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tfdeploy.errors import UserError

#: ImageNet RGB mean the seed subtracts before the backbone.
IMAGENET_MEAN = (123.68, 116.78, 103.94)

#: Units per block of the ResNet-v2 backbones seed checkpoints hold.
BACKBONE_UNITS: dict[str, tuple[int, int, int, int]] = {
    "resnet_v2_50": (3, 4, 6, 3),
    "resnet_v2_101": (3, 4, 23, 3),
}

NATIVE_FORMAT = "tfdeploy-deeplab-v3"

#: Precisions ``tfdeploy export --precision`` accepts; float32 is the reference.  Here,
#: free of numpy and TF, so the CLI can offer them at no import cost.
PRECISIONS = ("float32", "bfloat16", "float16", "int8")
DEFAULT_PRECISION = "float32"
#: int8 kernel sets (``--int8-kernels``).  ``fused``: the 1x1 convolutions with a float32
#: output run as oneDNN's fused quantized matrix multiply (``_QuantizedMatMul``: scales,
#: bias and the residual sum in the kernel), which TensorFlow has from
#: ``FUSED_INT8_TENSORFLOW`` on.  ``portable``: only the QuantizedConv2DWithBias* kernels,
#: which every TensorFlow 2 built with oneDNN has (``make test`` runs one in 2.12), with
#: a cast, a multiply and an add after each such convolution (5-10% slower end to end
#: on resnet_v2_50 here, see the README's Benchmarks).
INT8_KERNELS = ("fused", "portable")
#: The first TensorFlow release with ``_QuantizedMatMul`` (2.12 to 2.16 lack the op,
#: 2.17 to 2.21 have it: each release was tried).
FUSED_INT8_TENSORFLOW = "2.17"

#: Fraction of mask pixels a reduced precision export must agree on, per probe image.
DEFAULT_MIN_AGREEMENT = 0.99


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the served graph; weights come from the checkpoint."""

    num_classes: int = 21
    backbone: str = "resnet_v2_50"
    units: tuple[int, ...] = BACKBONE_UNITS["resnet_v2_50"]
    base_depths: tuple[int, ...] = (64, 128, 256, 512)
    root_depth: int = 64
    aspp_depth: int = 256
    aspp_rates: tuple[int, ...] = (6, 12, 18)
    output_stride: int = 16
    multi_grid: tuple[int, ...] = (1, 2, 4)
    batch_norm_epsilon: float = 1e-5
    mean: tuple[float, ...] = field(default=IMAGENET_MEAN)

    def __post_init__(self) -> None:
        problems = []
        if self.output_stride not in (4, 8, 16, 32):
            problems.append(f"output_stride must be 4, 8, 16 or 32, got {self.output_stride}")
        if len(self.units) != 4 or len(self.base_depths) != 4:
            problems.append("units and base_depths need exactly 4 entries (block1..block4)")
        if len(self.multi_grid) != (self.units[3] if len(self.units) == 4 else 0):
            problems.append(
                f"multi_grid {list(self.multi_grid)} needs one rate per block4 unit "
                f"({self.units[3] if len(self.units) == 4 else '?'})"
            )
        if not 1 <= self.num_classes <= 256:
            problems.append(f"number_of_classes must be 1..256, got {self.num_classes}")
        if len(self.mean) != 3:
            problems.append("mean needs 3 values (RGB)")
        if problems:
            raise UserError("invalid model configuration: " + "; ".join(problems))

    @property
    def scope(self) -> str:
        """Variable scope of the backbone, as slim named it."""
        return self.backbone

    # -- seed format ---------------------------------------------------------------------
    @classmethod
    def from_seed_args(cls, args: dict[str, Any], source: str = "data.json") -> ModelConfig:
        """Build from the seed's training arguments (``data.json``)."""
        model = args.get("resnet_model")
        if model not in BACKBONE_UNITS:
            raise UserError(
                f"{source}: unknown resnet_model {model!r} "
                f"(supported: {', '.join(sorted(BACKBONE_UNITS))})"
            )
        try:
            return cls(
                num_classes=int(args.get("number_of_classes", 21)),
                backbone=model,
                units=BACKBONE_UNITS[model],
                output_stride=int(args.get("output_stride", 16)),
                multi_grid=tuple(int(r) for r in args.get("multi_grid", (1, 2, 4))),
                batch_norm_epsilon=float(args.get("batch_norm_epsilon", 1e-5)),
            )
        except (TypeError, ValueError) as exc:
            raise UserError(f"{source}: {exc}") from None

    # -- native format -------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {"format": NATIVE_FORMAT, "format_version": 1, "model": asdict(self)}

    @classmethod
    def from_json(cls, doc: dict[str, Any], source: str = "config.json") -> ModelConfig:
        if doc.get("format") != NATIVE_FORMAT:
            raise UserError(f"{source}: not a tfdeploy config (format must be {NATIVE_FORMAT!r})")
        model = dict(doc.get("model") or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(model) - known)
        if unknown:
            raise UserError(f"{source}: unknown keys {', '.join(unknown)}")
        for key in ("units", "base_depths", "aspp_rates", "multi_grid", "mean"):
            if key in model:
                model[key] = tuple(model[key])
        try:
            return cls(**model)
        except TypeError as exc:
            raise UserError(f"{source}: {exc}") from None

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")


#: Default pixel limit per image (height x width): 2048x2048, from the measured cost of
#: an image in the embedded server (bench/pixels.py: peak RSS above idle ~= 111 MB + 267
#: B x pixels for the demo export, 68 MB + 165 B x pixels for resnet_v2_50 OS16): about
#: 1.2 GB and a few seconds of CPU for the largest image, where 4096x4096 cost ~4.6 GB.
#: Larger photographs are downscaled by the client (``tfdeploy predict --max-side``) or
#: need an export with a larger ``--max-pixels``.
DEFAULT_MAX_SIDE = 2048
DEFAULT_MAX_PIXELS = DEFAULT_MAX_SIDE * DEFAULT_MAX_SIDE


def parse_max_pixels(text: str | int) -> int:
    """``2048x2048`` or ``4194304`` -> a pixel count; ValueError otherwise."""
    if isinstance(text, int):
        value = text
    else:
        parts = str(text).lower().replace(" ", "").split("x")
        if len(parts) > 2 or not all(p.isdigit() for p in parts):
            raise ValueError(f"expected PIXELS or WIDTHxHEIGHT, got {text!r}")
        value = int(parts[0]) * (int(parts[1]) if len(parts) == 2 else 1)
    if value < 1:
        raise ValueError(f"must be at least 1 pixel, got {value}")
    return value
