"""The model registry: every architecture name, the input it reads, and how to build it.

Image models ('2d' patches, '3d' cubes) are built here; the 'tables' model (the connectivity
baseline) lives in :mod:`synapse_ei.connectivity` and reads no images. Two per-model settings shape
the build: ``norm`` (:mod:`synapse_ei.learn.models.norm`) and ``pretrained``
(:mod:`synapse_ei.learn.models.pretrained`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from synapse_ei.errors import DataError
from synapse_ei.learn.models.cnn2d import build_cnn2d, build_resnet2d, one_channel_stem
from synapse_ei.learn.models.norm import check_norm, NORMS
from synapse_ei.learn.models.pretrained import PUBLISHED_WEIGHTS, published_weights
from synapse_ei.learn.models.unet3d import build_unet3d
from synapse_ei.learn.models.video3d import build_video3d
from synapse_ei.learn.settings import TrainingSettings

#: Architecture name -> input kind ('2d' patches, '3d' cubes, 'tables' for table-only models).
ARCHITECTURES: dict[str, str] = {
    "cnn2d": "2d",
    "resnet18": "2d",
    "resnet50": "2d",
    "r3d_18": "3d",
    "mc3_18": "3d",
    "r2plus1d_18": "3d",
    "unet3d": "3d",
    "connectivity": "tables",
}

__all__ = ["ARCHITECTURES", "NORMS", "PUBLISHED_WEIGHTS", "build_model", "input_kind",
           "model_options", "one_channel_stem"]


def input_kind(architecture: str) -> str:
    """'2d', '3d' or 'tables' for a known architecture; :class:`DataError` for an unknown one."""
    if architecture not in ARCHITECTURES:
        raise DataError(
            f"models: unknown architecture {architecture!r}; use one of {sorted(ARCHITECTURES)}."
        )
    return ARCHITECTURES[architecture]


def model_options(settings: TrainingSettings | Mapping[str, Any] | None) -> dict[str, Any]:
    """The :func:`build_model` keywords (``norm``, ``pretrained``) of a model's settings, or of
    a settings dict (a config entry, or the one saved in model.pt)."""
    if isinstance(settings, TrainingSettings):
        return {"norm": check_norm(settings.norm), "pretrained": settings.pretrained}
    settings = dict(settings or {})
    return {"norm": check_norm(settings.get("norm") or "batch"),
            "pretrained": settings.get("pretrained") or None}


def build_model(
    architecture: str, num_classes: int = 2, norm: str = "batch", pretrained: str | None = None
) -> nn.Module:
    """An image model taking one-channel input of its kind, with a fresh ``num_classes`` head.

    ``norm``: 'batch' or 'group' (GroupNorm for small batches). ``pretrained``: a local
    torchvision state-dict file, or 'imagenet' / 'kinetics400' to download the published
    weights; only for the architectures in :data:`PUBLISHED_WEIGHTS`.
    """
    kind = input_kind(architecture)
    if kind == "tables":
        raise DataError(
            f"models: {architecture!r} is a table-only model, not an image model; it is built "
            "and trained by synapse_ei.connectivity."
        )
    check_norm(norm)
    if pretrained is not None:
        published_weights(architecture)  # fails early for models without any
    if architecture == "cnn2d":
        return build_cnn2d(num_classes, norm)
    if architecture == "unet3d":
        return build_unet3d(num_classes, norm)
    if architecture.startswith("resnet"):
        depth = int(architecture.removeprefix("resnet"))
        return build_resnet2d(depth, num_classes, norm, pretrained)
    return build_video3d(architecture, num_classes, norm, pretrained)
