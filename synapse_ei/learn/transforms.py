"""The transforms of the image models: the fixed intensity scaling and the augmentation
pipeline a model's config names.

Intensities get one fixed global scaling (``x / 255`` then ``(x - NORM_MEAN) / NORM_STD``, in
:func:`to_model_input`), never a per-patch stretch: the absolute grey level of membranes and
vesicles is part of what tells excitatory from inhibitory synapses. The EM-specific
augmentations themselves live in :mod:`synapse_ei.learn.augment`."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torchvision.transforms import v2

from synapse_ei.errors import DataError
from synapse_ei.learn import augment

KINDS = ("2d", "3d")
#: Fixed intensity normalisation applied after ``x / 255`` (EM grey levels centre near mid-grey).
NORM_MEAN = 0.5
NORM_STD = 0.25
#: Augmentations a model's config may name (:func:`build_transforms`); the section ops are 3D only.
SECTION_AUGMENTATIONS = ("section_intensity", "section_slip", "missing_section")
AUGMENTATIONS = ("flip", "rotate", "elastic", "intensity", "blur", "noise", *SECTION_AUGMENTATIONS)
DEFAULT_AUGMENTATIONS = ("flip", "rotate", "intensity", "noise")
#: Where training augmentations run: in the loader's workers, on the training device, or
#: ``auto`` (the device when it is a GPU, whose spare time is cheaper than the node's few cores).
AUGMENT_ON = ("auto", "loader", "device")


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise DataError(f"cutout kind {kind!r} is unknown; use one of {list(KINDS)}.")
    return kind


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """Raw uint8 values as a new float32 tensor in [0, 1] (``x / 255``), what augmentations see."""
    return x.float().div_(255.0)


def to_model_input(
    x: torch.Tensor,
    device: torch.device,
    memory_format: torch.memory_format | None = None,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """A batch from :class:`CutoutDataset`, on ``device``, as the networks take it: float32,
    ``x / 255`` for raw uint8 values (float input is already in [0, 1]), ``transform`` (if
    given) on each sample there, then ``(x - NORM_MEAN) / NORM_STD``. Scaling on the device keeps
    the host-to-device copy uint8; augmenting there frees the loader's CPU cores."""
    x = x.to(device, non_blocking=True)
    if x.dtype == torch.uint8:
        x = to_unit_range(x)
    if transform is not None:
        x = torch.stack([transform(item) for item in x])
    x = (x.float() - NORM_MEAN) / NORM_STD
    return x if memory_format is None else x.contiguous(memory_format=memory_format)


class RandomZFlip(torch.nn.Module):
    """Reverse the order of the z sections with probability ``p`` (input (D, C, H, W))."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) < self.p:
            return torch.flip(x, dims=[0])
        return x


class SectionsAsBatch(torch.nn.Module):
    """Apply 2D transforms to a (1, D, H, W) cube with one set of random parameters.

    torchvision v2 draws its parameters once per call and treats leading axes as a batch, so
    viewing the cube as D one-channel sections gives every section the same flip, rotation and
    jitter; nothing mixes z (40 nm) with the 4 nm xy plane.
    """

    def __init__(self, transform: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.transform = transform

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sections = x[0].unsqueeze(1)  # (D, 1, H, W)
        return self.transform(sections).squeeze(1).unsqueeze(0)


def build_transforms(
    kind: str,
    train: bool,
    strength: float = 1.0,
    augmentations: Sequence[str] = DEFAULT_AUGMENTATIONS,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Augmentations for scaled [0, 1] cutouts; identity when ``train`` is False.

    ``augmentations`` names the ops (see :data:`AUGMENTATIONS`): ``flip`` (horizontal, vertical and,
    for cubes, z), ``rotate`` (any in-plane angle), ``elastic`` (in-plane elastic deformation),
    ``intensity`` (brightness/contrast), ``blur``, ``noise`` and, for 3D cubes only,
    ``section_intensity``, ``section_slip`` and ``missing_section``
    (:mod:`synapse_ei.learn.augment`). In-plane ops act on every section of a cube alike; nothing
    mixes z (40 nm) with the 4 nm xy plane. ``strength`` scales every op but flips and rotation, in
    magnitude and probability; 0 keeps only those two.
    """
    _check_kind(kind)
    chosen = check_augmentations(kind, augmentations)
    if not train or not chosen:
        return v2.Identity()
    s = float(strength)
    in_plane: list[Callable] = []
    if "flip" in chosen:
        in_plane += [v2.RandomHorizontalFlip(p=0.5), v2.RandomVerticalFlip(p=0.5)]
    if "rotate" in chosen:
        # Synapses have no preferred orientation in the section plane; fill corners mid-grey.
        in_plane.append(v2.RandomRotation(
            degrees=180.0, interpolation=v2.InterpolationMode.BILINEAR, fill=augment.MID_GREY))
    if s > 0:
        if "elastic" in chosen:
            in_plane.append(v2.RandomApply([augment.InPlaneElastic(s)], p=min(1.0, 0.5 * s)))
        if "intensity" in chosen:
            in_plane.append(v2.ColorJitter(brightness=0.15 * s, contrast=0.15 * s))
        if "blur" in chosen:
            in_plane.append(v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 1.0 * s))],
                                           p=min(1.0, 0.3 * s)))
    cube_ops: list[Callable] = []
    if kind == "3d":
        if "flip" in chosen:
            in_plane.append(RandomZFlip(p=0.5))
        if s > 0:
            if "section_intensity" in chosen:
                cube_ops.append(augment.SectionIntensity(contrast=0.1 * s, brightness=0.05 * s))
            if "section_slip" in chosen:
                cube_ops.append(augment.SectionSlip(max_shift=round(3 * s), p=min(1.0, 0.3 * s)))
            if "missing_section" in chosen:
                cube_ops.append(augment.MissingSection(p=min(1.0, 0.2 * s)))
    if s > 0 and "noise" in chosen:
        cube_ops.append(v2.GaussianNoise(mean=0.0, sigma=0.03 * s, clip=True))
    stages = cube_ops
    if in_plane:
        first = v2.Compose(in_plane)
        stages = [first if kind == "2d" else SectionsAsBatch(first), *cube_ops]
    if not stages:  # e.g. only intensity ops at strength 0
        return v2.Identity()
    return stages[0] if len(stages) == 1 else v2.Compose(stages)


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
