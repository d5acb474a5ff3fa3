"""Datasets, augmentations and seeded loaders for the image models.

A cutout on disk is uint8, (Y, X) for 2D, (Z, Y, X) for 3D (the TIFF page convention), one row
of its shard's TIFF stack. The networks want exactly that order after a leading
channel axis, so an item is a tensor (1, H, W) or (1, D, H, W) with D = z sections.
Intensities get one fixed global scaling (``x / 255`` then ``(x - NORM_MEAN) / NORM_STD``, in
:func:`to_model_input`), never a per-patch stretch: the absolute grey level of membranes and
vesicles is part of what tells excitatory from inhibitory synapses.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    RandomSampler,
    SequentialSampler,
    WeightedRandomSampler,
    default_collate,
)
from torchvision.transforms import v2

from synapse_ei import augment
from synapse_ei.cutout import STACK_AXES, open_stack, rerun_shard
from synapse_ei.errors import DataError
from synapse_ei.tables import LABEL_INDEX, SPLITS, require_columns, to_int64

KINDS = ("2d", "3d")
#: Fixed intensity normalisation applied after ``x / 255`` (EM grey levels centre near mid-grey).
NORM_MEAN = 0.5
NORM_STD = 0.25
#: Manifest columns every image stage relies on.
MANIFEST_REQUIRED = ["id", "pre_pt_root_id", "split", "label"]
#: Augmentations a model's config may name (:func:`build_transforms`); the section ops are 3D only.
SECTION_AUGMENTATIONS = ("section_intensity", "section_slip", "missing_section")
AUGMENTATIONS = ("flip", "rotate", "elastic", "intensity", "blur", "noise", *SECTION_AUGMENTATIONS)
DEFAULT_AUGMENTATIONS = ("flip", "rotate", "intensity", "noise")
#: Training samplers: ``random`` draws without replacement; ``balanced`` shows both classes equally.
SAMPLERS = ("random", "balanced")
#: Where training augmentations run: in the loader's workers, on the training device, or
#: ``auto`` (the device when it is a GPU, whose spare time is cheaper than the node's few cores).
AUGMENT_ON = ("auto", "loader", "device")


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise DataError(f"cutout kind {kind!r} is unknown; use one of {list(KINDS)}.")
    return kind


def load_manifest(
    path: str | Path, split: str | Sequence[str] | None = None, kind: str | None = None
) -> pd.DataFrame:
    """Read the cutout manifest and select the rows of ``split`` (one name or several).

    With ``kind`` ('2d'/'3d') the ``path_<kind>`` and ``stack_index`` columns must be present and
    filled. An empty selection raises :class:`DataError`: a model must never train or predict on
    zero volumes.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: cutout manifest not found; run the cutout/gather stage first.")
    try:
        manifest = pd.read_parquet(path)
    except Exception as error:  # pyarrow raises several types for a damaged file
        raise DataError(
            f"{path}: cutout manifest is unreadable ({error}); rerun the gather_cutouts stage."
        ) from error
    columns = list(MANIFEST_REQUIRED)
    if kind is not None:
        columns += [f"path_{_check_kind(kind)}", "stack_index"]
    require_columns(manifest, columns, str(path))
    manifest = to_int64(manifest, ["id", "pre_pt_root_id"], str(path))
    if "status" in manifest.columns:
        # A shard manifest also lists skipped synapses; only written cutouts are usable.
        manifest = manifest[manifest["status"] == "ok"]

    splits = [split] if isinstance(split, str) else (list(split) if split is not None else None)
    if splits is not None:
        unknown = [name for name in splits if name not in SPLITS]
        if unknown:
            raise DataError(f"{path}: unknown split(s) {unknown}; use some of {list(SPLITS)}.")
        manifest = manifest[manifest["split"].isin(splits)]
    if manifest.empty:
        wanted = f"split {splits}" if splits is not None else "any split"
        raise DataError(
            f"{path}: no cutouts for {wanted} (the manifest has no such rows). Check the cutout "
            "stage's log and summary: every cutout may have been dropped, or the split is empty."
        )

    bad_labels = ~manifest["label"].isin(list(LABEL_INDEX))
    if bad_labels.any():
        row = manifest.index[bad_labels.to_numpy()][0]
        raise DataError(
            f"{path}: row {row} has label {manifest.loc[row, 'label']!r}; labels must be one of "
            f"{list(LABEL_INDEX)}. Fix the label mapping in the config's `labels` section."
        )
    if kind is not None:
        missing = (manifest[f"path_{kind}"].isna() | (manifest[f"path_{kind}"] == "")
                   | manifest["stack_index"].isna())
        if missing.any():
            row = manifest.index[missing.to_numpy()][0]
            raise DataError(
                f"{path}: row {row} (id {manifest.loc[row, 'id']}) has no path_{kind} or "
                "stack_index; rerun the cutout stage so every manifest row has its cutout."
            )
    return manifest.reset_index(drop=True)


def open_cutout(
    manifest_path: str | Path, synapse_id: int, kind: str, root: str | Path | None = None
) -> np.ndarray:
    """The cutout of ``kind`` of synapse ``synapse_id`` as the manifest lists it, raw uint8 as
    stored ((Y, X) for "2d", (Z, Y, X) for "3d"), from any working directory.

    A manifest's ``path_2d``/``path_3d`` are relative to ``root``: by default the manifest's
    own folder, as for the gathered ``results/cutouts/manifest.parquet``. A shard's manifest and
    the leakage audit's list the same stacks: give them ``root="results/cutouts"``.
    """
    manifest_path = Path(manifest_path)
    root = manifest_path.parent if root is None else Path(root)
    rows = load_manifest(manifest_path, kind=kind)
    row = rows[rows["id"] == int(synapse_id)]
    if row.empty:
        raise DataError(
            f"{manifest_path}: no {kind} cutout of synapse id {synapse_id} (the manifest lists "
            "only written cutouts; a skipped synapse is in its shard's manifest with its status)."
        )
    relative, index = str(row[f"path_{kind}"].iloc[0]), int(row["stack_index"].iloc[0])
    if not (root / relative).is_file():
        raise DataError(
            f"{manifest_path}: synapse id {synapse_id}'s stack {relative!r} is not under "
            f"{str(root)!r}. Its paths are relative to the folder of the gathered manifest: "
            "pass root='results/cutouts' (or wherever that manifest is)."
        )
    return np.array(open_stack(root / relative, kind, length=index + 1)[index])


def stored_shape(path: Path, kind: str) -> tuple[int, ...]:
    """Shape of one cutout ((Y, X) or (Z, Y, X)) in a shard's TIFF stack, read from its header."""
    return tuple(open_stack(path, _check_kind(kind)).shape[1:])


class StackedSamples(list):
    """The ``(x, y)`` samples of one batch, as ``Dataset.__getitems__`` must return them, that
    also keeps them stacked, so :func:`collate` passes the batch on instead of copying it."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        super().__init__(zip(x, y))
        self.x, self.y = x, y


def collate(samples: Sequence) -> Any:
    """``default_collate``, except that :class:`StackedSamples` are already a batch."""
    if isinstance(samples, StackedSamples):
        return [samples.x, samples.y]
    return default_collate(samples)


class CutoutDataset(Dataset):
    """The cutouts listed in a manifest, as ``(x, y)`` with y = 1 for inhibitory.

    Each cutout is row ``stack_index`` of the shard's TIFF stack ``path_<kind>``, as
    :func:`synapse_ei.cutout.cut_shard` writes them; the stacks are memory-mapped. ``x`` is
    (1, H, W) or (1, D, H, W): without a ``transform`` the raw uint8 values, so batches stay
    small until :func:`to_model_input` scales and normalises them on the device; with one,
    float32 in [0, 1] after the transform (see :func:`build_transforms`), so augmentations work
    in the raw intensity range. ``shape`` is the on-disk shape of one cutout ((Y, X) or
    (Z, Y, X)); by default the first stack's. ``preload`` reads every cutout once into memory
    (small sets: nothing is re-read per epoch). A batch is read in one call (``__getitems__``,
    which the DataLoader calls): one copy per cutout from the page cache into the batch.
    """

    def __init__(
        self,
        manifest: pd.DataFrame,
        root: str | Path,
        kind: str,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        shape: Sequence[int] | None = None,
        preload: bool = False,
    ) -> None:
        self.kind = _check_kind(kind)
        if len(manifest) == 0:
            raise DataError(f"CutoutDataset: the manifest selection for {kind} cutouts is empty.")
        require_columns(manifest, ["id", "label", f"path_{kind}", "stack_index"],
                        "cutout manifest")
        self.root = Path(root)
        names, self._stack_of = np.unique(manifest[f"path_{kind}"].astype(str),
                                          return_inverse=True)
        self.stacks = [self.root / name for name in names]
        self._row_in_stack = manifest["stack_index"].to_numpy(dtype=np.int64)
        self.ids = manifest["id"].to_numpy()
        self.labels = np.array([LABEL_INDEX[label] for label in manifest["label"]], dtype=np.int64)
        self.transform = transform
        if shape is None:
            shape = stored_shape(self.stacks[0], kind)
        self.shape = tuple(int(n) for n in shape)
        axes = STACK_AXES[kind][1:]  # a stack's axes less the one that counts the cutouts
        if len(self.shape) != len(axes):
            raise DataError(
                f"{self.stacks[0]}: a {kind} cutout must have {len(axes)} axes ({axes}), "
                f"got shape {self.shape}. Check `cutout.size_{kind}` and the manifest's paths."
            )
        self._mapped: dict[int, np.ndarray] = {}  # stack number -> memmap, opened on first use
        self._cache: np.ndarray | None = None
        if preload:
            self._cache = self.read_many(np.arange(len(self)))

    def __len__(self) -> int:
        return len(self.labels)

    def __getstate__(self) -> dict:
        # DataLoader workers map the stacks themselves rather than receive copies of them.
        return {**self.__dict__, "_mapped": {}}

    def _stack(self, number: int) -> np.ndarray:
        if number not in self._mapped:
            rows = self._row_in_stack[self._stack_of == number]
            self._mapped[number] = open_stack(self.stacks[number], self.kind, self.shape,
                                              int(rows.max()) + 1)
        return self._mapped[number]

    def read_many(self, indices: Sequence[int]) -> np.ndarray:
        """The raw uint8 arrays of items ``indices``, stacked: (B, *shape).

        Raises :class:`DataError` naming the file of a damaged, truncated or misshapen stack,
        and the file, row and synapse of an all-zero cutout.
        """
        indices = np.asarray(indices, dtype=np.int64)
        if self._cache is not None:
            return self._cache[indices]
        # One copy per item, straight from the page cache into the batch.
        batch = np.empty((len(indices), *self.shape), dtype=np.uint8)
        for position, index in enumerate(indices):
            batch[position] = self._stack(self._stack_of[index])[self._row_in_stack[index]]
        empty = (torch.from_numpy(batch).reshape(len(batch), -1).amax(dim=1) == 0).numpy()
        if empty.any():
            i = int(indices[np.flatnonzero(empty)[0]])
            raise DataError(
                f"cutout of synapse {self.ids[i]} in {str(self.stacks[self._stack_of[i]])!r} "
                f"(row {self._row_in_stack[i]}) is all zeros (missing image data). "
                f"{rerun_shard(self.stacks[self._stack_of[i]].parent)}"
            )
        return batch

    def read(self, index: int) -> np.ndarray:
        """The raw uint8 array of item ``index`` as stored on disk."""
        return self.read_many([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> StackedSamples:
        x = torch.from_numpy(self.read_many(indices)).unsqueeze(1)  # (B, 1, ...)
        y = torch.from_numpy(self.labels[np.asarray(indices, dtype=np.int64)])
        if self.transform is not None:
            x = torch.stack([self.transform(to_unit_range(item)) for item in x])
        return StackedSamples(x, y)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.__getitems__([index])[0]


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

    ``augmentations`` names the ops (see :data:`AUGMENTATIONS`): ``flip`` (horizontal, vertical
    and, for cubes, z), ``rotate`` (any in-plane angle), ``elastic`` (in-plane elastic
    deformation), ``intensity`` (brightness/contrast), ``blur``, ``noise`` and, for 3D cubes
    only, ``section_intensity``, ``section_slip`` and ``missing_section``
    (:mod:`synapse_ei.augment`). In-plane ops act on every section of a cube alike; nothing mixes
    z (40 nm) with the 4 nm xy plane. ``strength`` scales every op but flips and rotation, in
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


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: derive numpy/random seeds from the worker's torch seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    seed: int,
    shuffle: bool,
    num_workers: int = 0,
    num_samples: int | None = None,
    drop_last: bool = False,
    pin_memory: bool = False,
    sampler: str = "random",
) -> DataLoader:
    """A DataLoader whose order and worker seeds follow ``seed`` alone.

    With ``shuffle`` and ``num_samples`` smaller than the dataset, each pass draws that many
    distinct items (RandomSampler without replacement), which bounds a CPU epoch's length.
    ``sampler="balanced"`` (with ``shuffle``) instead draws ``num_samples`` items with
    replacement, each class equally likely (the dataset needs a ``labels`` array), an
    alternative to class weights in the loss. The loader's ``generator`` carries all its
    randomness, sampler included, so saving and restoring its state resumes the exact sequence.
    """
    if sampler not in SAMPLERS:
        raise DataError(f"models: sampler {sampler!r} is unknown; use one of {list(SAMPLERS)}.")
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    if shuffle and sampler == "balanced":
        labels = np.asarray(dataset.labels)
        counts = np.bincount(labels)
        count = len(dataset) if num_samples is None else int(num_samples)
        order = WeightedRandomSampler(
            torch.from_numpy(1.0 / counts[labels]), num_samples=count, replacement=True,
            generator=generator,
        )
    elif shuffle:
        count = len(dataset) if num_samples is None else min(int(num_samples), len(dataset))
        order = RandomSampler(
            dataset, replacement=False, num_samples=count, generator=generator
        )
    else:
        order = SequentialSampler(dataset)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=order,
        num_workers=num_workers,
        worker_init_fn=seed_worker,
        generator=generator,
        collate_fn=collate,
        drop_last=drop_last,
        pin_memory=pin_memory,
        persistent_workers=False,
    )
