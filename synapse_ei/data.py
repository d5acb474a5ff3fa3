"""Datasets, augmentations and seeded loaders for the image models.

A cutout on disk is a uint8 TIFF: (Y, X) for 2D, (Z, Y, X) for 3D (the TIFF page convention).
The networks want exactly that order after a leading channel axis, so an item is a float32 tensor
(1, H, W) or (1, D, H, W) with D = z sections. Intensities get one fixed global scaling
(``x / 255`` then ``(x - NORM_MEAN) / NORM_STD``), never a per-patch stretch: the absolute grey
level of membranes and vesicles is part of what tells excitatory from inhibitory synapses.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler
from torchvision.transforms import v2

from synapse_ei.cutout import read_cutout
from synapse_ei.errors import DataError
from synapse_ei.tables import LABEL_INDEX, SPLITS, require_columns, to_int64

KINDS = ("2d", "3d")
#: Fixed intensity normalisation applied after ``x / 255`` (EM grey levels centre near mid-grey).
NORM_MEAN = 0.5
NORM_STD = 0.25
#: Manifest columns every image stage relies on.
MANIFEST_REQUIRED = ["id", "pre_pt_root_id", "split", "label"]


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise DataError(f"cutout kind {kind!r} is unknown; use one of {list(KINDS)}.")
    return kind


def load_manifest(
    path: str | Path, split: str | Sequence[str] | None = None, kind: str | None = None
) -> pd.DataFrame:
    """Read the cutout manifest and select the rows of ``split`` (one name or several).

    With ``kind`` ('2d'/'3d') the ``path_<kind>`` column must be present and filled. An empty
    selection raises :class:`DataError`: a model must never train or predict on zero volumes.
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
        columns.append(f"path_{_check_kind(kind)}")
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
        missing = manifest[f"path_{kind}"].isna() | (manifest[f"path_{kind}"] == "")
        if missing.any():
            row = manifest.index[missing.to_numpy()][0]
            raise DataError(
                f"{path}: row {row} (id {manifest.loc[row, 'id']}) has no path_{kind}; rerun the "
                "cutout stage so every manifest row has its TIFF."
            )
    return manifest.reset_index(drop=True)


def stored_shape(path: Path) -> tuple[int, ...]:
    """Shape of the array in a cutout TIFF, read from its header."""
    try:
        with tifffile.TiffFile(path) as tiff:
            return tuple(tiff.series[0].shape)
    except Exception as error:  # missing, truncated, not a TIFF: tifffile raises several types
        raise DataError(
            f"cutout {str(path)!r} is missing or unreadable ({error}). Rerun the cutout shard "
            "that wrote it."
        ) from error


class CutoutDataset(Dataset):
    """Cutout TIFFs listed in a manifest, as ``(x, y)`` with y = 1 for inhibitory.

    ``transform`` (see :func:`build_transforms`) sees the scaled tensor in [0, 1] and the
    fixed normalisation comes after it, so augmentations work in the raw intensity range.
    ``shape`` is the on-disk array shape ((Y, X) or (Z, Y, X)); by default the first file's.
    ``preload`` reads every TIFF once into memory (small demo sets: avoids re-reading per epoch).
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
        require_columns(manifest, ["label", f"path_{kind}"], "cutout manifest")
        self.root = Path(root)
        self.paths = [self.root / str(p) for p in manifest[f"path_{kind}"]]
        self.labels = np.array([LABEL_INDEX[label] for label in manifest["label"]], dtype=np.int64)
        self.transform = transform
        if shape is None:
            shape = stored_shape(self.paths[0])
        self.shape = tuple(int(n) for n in shape)
        if len(self.shape) != (2 if kind == "2d" else 3):
            raise DataError(
                f"{self.paths[0]}: a {kind} cutout must have {2 if kind == '2d' else 3} axes, "
                f"got shape {self.shape}. Check `cutout.size_{kind}` and the manifest's paths."
            )
        self._cache: list[np.ndarray] | None = None
        if preload:
            self._cache = [read_cutout(path, self.shape) for path in self.paths]

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, index: int) -> np.ndarray:
        """The raw uint8 array of item ``index`` as stored on disk."""
        if self._cache is not None:
            return self._cache[index]
        return read_cutout(self.paths[index], self.shape)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        array = self.read(index)
        x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32) / 255.0).unsqueeze(0)
        if self.transform is not None:
            x = self.transform(x)
        x = (x - NORM_MEAN) / NORM_STD
        return x.contiguous(), torch.tensor(self.labels[index], dtype=torch.int64)


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
    kind: str, train: bool, strength: float = 1.0
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Augmentations for scaled [0, 1] cutouts; identity when ``train`` is False.

    2D: random horizontal/vertical flips, rotation by any angle, light brightness/contrast
    jitter and gaussian noise. 3D: the same in-plane ops, identical for every section, plus a
    random z flip. ``strength`` scales the intensity jitter and noise (0 keeps only geometry).
    """
    _check_kind(kind)
    if not train:
        return v2.Identity()
    jitter = 0.15 * strength
    in_plane: list[Callable] = [
        v2.RandomHorizontalFlip(p=0.5),
        v2.RandomVerticalFlip(p=0.5),
        # Synapses have no preferred orientation in the section plane; fill corners mid-grey.
        v2.RandomRotation(degrees=180.0, interpolation=v2.InterpolationMode.BILINEAR, fill=0.5),
    ]
    if strength > 0:
        in_plane += [
            v2.ColorJitter(brightness=jitter, contrast=jitter),
            v2.GaussianNoise(mean=0.0, sigma=0.03 * strength, clip=True),
        ]
    if kind == "2d":
        return v2.Compose(in_plane)
    return SectionsAsBatch(v2.Compose([*in_plane, RandomZFlip(p=0.5)]))


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
) -> DataLoader:
    """A DataLoader whose order and worker seeds follow ``seed`` alone.

    With ``shuffle`` and ``num_samples`` smaller than the dataset, each pass draws that many
    distinct items (RandomSampler without replacement), which bounds a CPU epoch's length.
    The loader's ``generator`` carries all its randomness, so saving and restoring its state
    resumes the exact sequence.
    """
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    if shuffle:
        count = len(dataset) if num_samples is None else min(int(num_samples), len(dataset))
        sampler = RandomSampler(
            dataset, replacement=False, num_samples=count, generator=generator
        )
    else:
        sampler = SequentialSampler(dataset)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        worker_init_fn=seed_worker,
        generator=generator,
        drop_last=drop_last,
        pin_memory=pin_memory,
        persistent_workers=False,
    )
