"""The model registry: every architecture name, the input it reads, and how to build it.

Image models ('2d' patches, '3d' cubes) are built here; the 'tables' model (the connectivity
baseline) lives in :mod:`synapse_ei.baseline` and reads no images.
"""

from __future__ import annotations

from torch import nn

from synapse_ei.errors import DataError
from synapse_ei.models.cnn2d import build_cnn2d, build_resnet2d, one_channel_stem
from synapse_ei.models.video3d import build_video3d

#: Architecture name -> input kind ('2d' patches, '3d' cubes, 'tables' for table-only models).
ARCHITECTURES: dict[str, str] = {
    "cnn2d": "2d",
    "resnet18": "2d",
    "resnet50": "2d",
    "r3d_18": "3d",
    "mc3_18": "3d",
    "r2plus1d_18": "3d",
    "connectivity": "tables",
}

__all__ = ["ARCHITECTURES", "build_model", "input_kind", "one_channel_stem"]


def input_kind(architecture: str) -> str:
    """'2d', '3d' or 'tables' for a known architecture; :class:`DataError` for an unknown one."""
    if architecture not in ARCHITECTURES:
        raise DataError(
            f"models: unknown architecture {architecture!r}; use one of {sorted(ARCHITECTURES)}."
        )
    return ARCHITECTURES[architecture]


def build_model(architecture: str, num_classes: int = 2) -> nn.Module:
    """A freshly initialised image model taking one-channel input of its kind."""
    kind = input_kind(architecture)
    if kind == "tables":
        raise DataError(
            f"models: {architecture!r} is a table-only model, not an image model; it is built "
            "and trained by synapse_ei.baseline."
        )
    if architecture == "cnn2d":
        return build_cnn2d(num_classes)
    if architecture.startswith("resnet"):
        return build_resnet2d(int(architecture.removeprefix("resnet")), num_classes)
    return build_video3d(architecture, num_classes)
