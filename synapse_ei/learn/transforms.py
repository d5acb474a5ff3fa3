"""The transforms of the image models: the fixed intensity scaling and the augmentation
pipeline a model's config names.

Intensities get one fixed global scaling (``x / 255`` then ``(x - NORM_MEAN) / NORM_STD``, in
:func:`to_model_input`), never a per-patch stretch: the absolute grey level of membranes and
vesicles is part of what tells excitatory from inhibitory synapses. The augmentations themselves
(batched, one resampling per cutout) live in :mod:`synapse_ei.learn.augment`."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from synapse_ei.config import model_defaults
from synapse_ei.errors import DataError
from synapse_ei.learn.augment import (
    AUGMENTATIONS,
    BatchAugmentation,
    SECTION_AUGMENTATIONS,
    to_unit_range,
)

KINDS = ("2d", "3d")
#: Fixed intensity normalisation applied after ``x / 255`` (EM grey levels centre near mid-grey).
NORM_MEAN = 0.5
NORM_STD = 0.25
#: Where training augmentations run: in the loader's workers, on the training device, or
#: ``auto`` (the device when it is a GPU, whose spare time is cheaper than the node's few cores).
AUGMENT_ON = ("auto", "loader", "device")


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise DataError(f"cutout kind {kind!r} is unknown; use one of {list(KINDS)}.")
    return kind


def to_model_input(
    x: torch.Tensor,
    device: torch.device,
    memory_format: torch.memory_format | None = None,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """A batch from :class:`CutoutDataset`, on ``device``, as the networks take it: float32,
    ``x / 255`` for raw uint8 values (float input is already in [0, 1]), ``transform`` (if
    given, e.g. a :class:`~synapse_ei.learn.augment.BatchAugmentation`) on the whole batch there,
    then ``(x - NORM_MEAN) / NORM_STD``. Scaling on the device keeps the host-to-device copy
    uint8; augmenting there frees the loader's CPU cores."""
    x = x.to(device, non_blocking=True)
    if transform is not None:
        x = transform(x)  # takes the raw uint8 batch (a z flip reorders it before scaling)
    elif x.dtype == torch.uint8:
        x = to_unit_range(x)
    x = (x.float() - NORM_MEAN) / NORM_STD
    return x if memory_format is None else x.contiguous(memory_format=memory_format)


def build_transforms(
    kind: str,
    train: bool,
    strength: float = 1.0,
    augmentations: Sequence[str] | None = None,
) -> BatchAugmentation:
    """The training augmentations of a batch of scaled [0, 1] cutouts; none when ``train`` is
    False (the result is then falsy and returns its input).

    ``augmentations`` names the ops (see :data:`~synapse_ei.learn.augment.AUGMENTATIONS`; by
    default the schema's ``models.<name>.augmentations``): ``flip`` (horizontal, vertical and,
    for cubes, z), ``rotate`` (any in-plane angle), ``elastic`` (in-plane elastic deformation),
    ``intensity`` (brightness/contrast), ``blur``, ``noise`` and, for 3D cubes only,
    ``section_intensity``, ``section_slip`` and ``missing_section``. In-plane ops act on every
    section of a cube alike; nothing mixes z (40 nm) with the 4 nm xy plane. ``strength`` scales
    every op but flips and rotation, in magnitude and probability; 0 keeps only those two.
    """
    check_kind(kind)
    if augmentations is None:
        augmentations = model_defaults()["augmentations"]
    chosen = check_augmentations(kind, augmentations)
    return BatchAugmentation(kind, chosen if train else [], strength)

def check_augmentations(kind: str, augmentations: Sequence[str]) -> list[str]:
    """``augmentations`` as a list, refusing unknown names and section ops for 2D patches."""
    chosen = [str(name) for name in augmentations]
    unknown = [name for name in chosen if name not in AUGMENTATIONS]
    if unknown:
        raise DataError(f"models: augmentations {unknown} are unknown; use some of "
                        f"{list(AUGMENTATIONS)}.")
    sections = [name for name in chosen if name in SECTION_AUGMENTATIONS]
    if kind == "2d" and sections:
        raise DataError(f"models: augmentations {sections} change z sections and need a 3D "
                        "model; remove them from this 2D model's `augmentations`.")
    return chosen
