"""Datasets and seeded loaders for the image models.

A cutout on disk is uint8, (Y, X) for 2D, (Z, Y, X) for 3D (the TIFF page convention), one row
of its shard's TIFF stack (:mod:`synapse_ei.cutout.stacks`). The networks want exactly that
order after a leading channel axis, so an item is a tensor (1, H, W) or (1, D, H, W) with
D = z sections; :mod:`synapse_ei.learn.transforms` scales and augments it."""

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

from synapse_ei.cutout.manifest import rerun_shard
from synapse_ei.cutout.stacks import open_stack, STACK_AXES
from synapse_ei.errors import DataError
from synapse_ei.learn.transforms import check_kind
from synapse_ei.tables import LABEL_INDEX, require_columns, SPLITS, to_int64

#: Manifest columns every image stage relies on.
MANIFEST_REQUIRED = ["id", "pre_pt_root_id", "split", "label"]
#: Training samplers: ``random`` draws without replacement; ``balanced`` shows both classes equally.
SAMPLERS = ("random", "balanced")


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
        columns += [f"path_{check_kind(kind)}", "stack_index"]
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
    return tuple(open_stack(path, check_kind(kind)).shape[1:])


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
    :func:`synapse_ei.cutout.shard.cut_shard` writes them; the stacks are memory-mapped. ``x`` is
    (1, H, W) or (1, D, H, W): without a ``transform`` the raw uint8 values, so batches stay
    small until :func:`to_model_input` scales and normalises them on the device; with one,
    float32 in [0, 1] after the transform, which takes the whole raw batch (see
    :func:`build_transforms`), so augmentations work in the raw intensity range. ``shape`` is
    the on-disk shape of one cutout ((Y, X) or (Z, Y, X)); by default the first stack's. ``preload`` reads every cutout once into memory
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
        self.kind = check_kind(kind)
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
            x = self.transform(x)  # the whole raw batch at once, to [0, 1] floats
        return StackedSamples(x, y)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.__getitems__([index])[0]


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
