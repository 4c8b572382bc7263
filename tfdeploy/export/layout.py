"""The layer plan of DeepLab-v3: which units exist, their strides and atrous rates, and
the slim variable names and shapes they own.

Both the checkpoint reader (to match names) and the TF model (to compute) walk this one
plan, so the two can never disagree about the architecture.  No TensorFlow here.
"""

from __future__ import annotations

from dataclasses import dataclass

from tfdeploy.export.config import ModelConfig

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Unit:
    """One pre-activation bottleneck (``<scope>/blockB/unit_U/bottleneck_v2``)."""

    scope: str
    depth_in: int
    depth: int
    depth_bottleneck: int
    stride: int
    rate: int

    @property
    def has_shortcut_conv(self) -> bool:
        return self.depth != self.depth_in


def units(config: ModelConfig) -> list[Unit]:
    """Units in execution order, with the stride/rate slim's ``stack_blocks_dense`` gives
    them once the output stride is reached (multi-grid applies to block4 only)."""
    plan: list[Unit] = []
    target = config.output_stride // 4  # the root block (conv1 + pool1) already strides 4
    current_stride, rate = 1, 1
    depth_in = config.root_depth
    for b, (count, base) in enumerate(zip(config.units, config.base_depths, strict=True), start=1):
        block_stride = 1 if b == 4 else 2  # stride sits on the last unit of blocks 1-3
        for i in range(count):
            stride = block_stride if i == count - 1 else 1
            scope = f"{config.scope}/block{b}/unit_{i + 1}/bottleneck_v2"
            if current_stride == target:
                unit_rate = rate * (config.multi_grid[i] if b == 4 else 1)
                plan.append(Unit(scope, depth_in, base * 4, base, 1, unit_rate))
                rate *= stride
            else:
                plan.append(Unit(scope, depth_in, base * 4, base, stride, 1))
                current_stride *= stride
            depth_in = base * 4
    return plan


def _bn(prefix: str, depth: int) -> dict[str, Shape]:
    # slim names a conv's normalizer "<conv>/BatchNorm/..", a bare batch_norm "<scope>/..".
    return {
        f"{prefix}/{v}": (depth,)
        for v in ("gamma", "beta", "moving_mean", "moving_variance")
    }


def variable_shapes(config: ModelConfig) -> dict[str, Shape]:
    """Every variable the served graph reads, by slim name, with its shape."""
    shapes: dict[str, Shape] = {
        f"{config.scope}/conv1/weights": (7, 7, 3, config.root_depth),
        f"{config.scope}/conv1/biases": (config.root_depth,),
    }
    for u in units(config):
        shapes.update(_bn(f"{u.scope}/preact", u.depth_in))
        if u.has_shortcut_conv:
            shapes[f"{u.scope}/shortcut/weights"] = (1, 1, u.depth_in, u.depth)
            shapes[f"{u.scope}/shortcut/biases"] = (u.depth,)
        shapes[f"{u.scope}/conv1/weights"] = (1, 1, u.depth_in, u.depth_bottleneck)
        shapes.update(_bn(f"{u.scope}/conv1/BatchNorm", u.depth_bottleneck))
        shapes[f"{u.scope}/conv2/weights"] = (3, 3, u.depth_bottleneck, u.depth_bottleneck)
        shapes.update(_bn(f"{u.scope}/conv2/BatchNorm", u.depth_bottleneck))
        shapes[f"{u.scope}/conv3/weights"] = (1, 1, u.depth_bottleneck, u.depth)
        shapes[f"{u.scope}/conv3/biases"] = (u.depth,)
    feat = config.base_depths[3] * 4
    aspp, d = "DeepLab_v3/ASPP_layer", config.aspp_depth
    branches = {"image_level_conv_1x1": 1, "conv_1x1_0": 1}
    branches.update({f"conv_3x3_{i + 1}": 3 for i in range(len(config.aspp_rates))})
    for name, k in branches.items():
        shapes[f"{aspp}/{name}/weights"] = (k, k, feat, d)
        shapes.update(_bn(f"{aspp}/{name}/BatchNorm", d))
    shapes[f"{aspp}/conv_1x1_output/weights"] = (1, 1, d * len(branches), d)
    shapes.update(_bn(f"{aspp}/conv_1x1_output/BatchNorm", d))
    shapes["DeepLab_v3/logits/weights"] = (1, 1, d, config.num_classes)
    shapes["DeepLab_v3/logits/biases"] = (config.num_classes,)
    return shapes


def is_training_only(name: str, config: ModelConfig) -> bool:
    """Variables a seed training checkpoint holds that the served graph never uses:
    optimizer state, Adam slots, slim's unused postnorm and classifier."""
    return (
        name.startswith("optimizer_vars/")
        or name in ("Variable", "global_step", "beta1_power", "beta2_power")
        or name.endswith(("/Adam", "/Adam_1"))
        or name.startswith((f"{config.scope}/postnorm/", f"{config.scope}/logits/"))
    )
