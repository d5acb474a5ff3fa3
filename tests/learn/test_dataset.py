"""Manifest selection, cutout datasets and seeded loaders."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

from dataset_helpers import SIZE_2D, SIZE_3D, write_cutouts
from synapse_ei.errors import DataError
from synapse_ei.learn.dataset import CutoutDataset, load_manifest, make_loader, open_cutout
from synapse_ei.learn.transforms import NORM_MEAN, NORM_STD, to_model_input
from cutout_helpers import cut_all, stored
from synapse_ei.cutout.gather import gather
from synapse_ei.cutout.plan import plan_shards


@pytest.fixture
def cutouts(tmp_path):
    return tmp_path, write_cutouts(tmp_path)


def test_open_cutout_reads_a_manifest_row_from_any_directory(cutouts, tmp_path_factory,
                                                             monkeypatch):
    root, manifest = cutouts
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    monkeypatch.chdir(elsewhere)  # as from the repository root: not the manifest's folder
    relative_manifest = Path("..") / root.name / "manifest.parquet"
    for kind in ("2d", "3d"):
        expected = tifffile.imread(root / f"shards/000/{kind}.tif")[5]
        for path in (manifest, relative_manifest):
            cutout = open_cutout(path, 1005, kind)
            np.testing.assert_array_equal(cutout, expected)
            assert cutout.dtype == np.uint8
            assert cutout.shape == (SIZE_2D if kind == "2d" else SIZE_3D)
    with pytest.raises(DataError, match=r"manifest.parquet: no 2d cutout of synapse id 999"):
        open_cutout(manifest, 999, "2d")
    shard_manifest = root / "shards/000/manifest.parquet"
    pd.read_parquet(manifest).to_parquet(shard_manifest)  # paths relative to results/cutouts
    with pytest.raises(DataError, match=r"not under .*pass root="):
        open_cutout(shard_manifest, 1005, "3d")
    np.testing.assert_array_equal(open_cutout(shard_manifest, 1005, "3d", root=root),
                                  tifffile.imread(root / "shards/000/3d.tif")[5])


def test_load_manifest_selects_split_with_int64_ids(cutouts):
    root, manifest = cutouts
    train = load_manifest(manifest, "train", "3d")
    assert len(train) == 6 and set(train["split"]) == {"train"}
    assert train["pre_pt_root_id"].dtype == np.int64
    assert train["pre_pt_root_id"].iloc[0] == 864691135000000000
    assert len(load_manifest(manifest, ["val", "test"])) == 6


def test_empty_split_or_manifest_is_refused(cutouts, tmp_path):
    root, manifest = cutouts
    frame = pd.read_parquet(manifest)
    frame[frame["split"] != "val"].to_parquet(root / "no_val.parquet", index=False)
    with pytest.raises(DataError, match=r"val.*cutout stage"):
        load_manifest(root / "no_val.parquet", "val", "2d")
    frame.iloc[:0].to_parquet(root / "empty.parquet", index=False)
    with pytest.raises(DataError, match="empty.parquet"):
        load_manifest(root / "empty.parquet", "train", "3d")
    with pytest.raises(DataError, match="empty.parquet"):
        load_manifest(root / "empty.parquet")


def test_unknown_label_names_the_row(cutouts):
    root, manifest = cutouts
    frame = pd.read_parquet(manifest)
    frame.loc[3, "label"] = "Excitatory "
    frame.to_parquet(root / "bad.parquet", index=False)
    with pytest.raises(DataError, match="row 3"):
        load_manifest(root / "bad.parquet")


@pytest.mark.parametrize(("kind", "shape"), [("2d", SIZE_2D), ("3d", SIZE_3D)])
def test_items_use_fixed_global_scaling(cutouts, kind, shape):
    root, manifest = cutouts
    rows = load_manifest(manifest, "train", kind)
    dataset = CutoutDataset(rows, root, kind)
    stored, y = dataset[0]
    raw = tifffile.imread(root / rows[f"path_{kind}"].iloc[0])[rows["stack_index"].iloc[0]]
    # Items stay raw uint8 up to the device; to_model_input scales them there.
    assert stored.shape == (1, *shape) and stored.dtype == torch.uint8
    torch.testing.assert_close(stored[0], torch.from_numpy(raw))
    assert y.dtype == torch.int64 and int(y) == 1  # row 0 is inhibitory
    x = to_model_input(stored.unsqueeze(0), torch.device("cpu"))[0]
    assert x.dtype == torch.float32
    expected = (torch.from_numpy(raw.astype(np.float32)) / 255 - NORM_MEAN) / NORM_STD
    torch.testing.assert_close(x[0], expected)
    # An augmented (float, [0, 1]) batch gets the same normalisation, and is not changed in place.
    scaled = stored.unsqueeze(0).float() / 255
    torch.testing.assert_close(to_model_input(scaled, torch.device("cpu"))[0, 0], expected)
    torch.testing.assert_close(scaled, stored.unsqueeze(0).float() / 255)
    # No per-patch stretch: values 40..200 stay inside, not mapped onto the full range.
    assert x.min() > (0 / 255 - NORM_MEAN) / NORM_STD + 0.5
    assert x.max() < (255 / 255 - NORM_MEAN) / NORM_STD - 0.5


def test_missing_stack_is_named(cutouts):
    root, manifest = cutouts
    rows = load_manifest(manifest, "train", "2d")
    (root / rows["path_2d"].iloc[2]).unlink()
    dataset = CutoutDataset(rows, root, "2d", shape=SIZE_2D)
    with pytest.raises(DataError, match=rf"{rows['path_2d'].iloc[2]}.*missing"):
        dataset[2]


def test_a_cutout_shape_of_the_wrong_rank_is_refused(cutouts):
    root, manifest = cutouts
    rows = load_manifest(manifest, "train", "3d")
    with pytest.raises(DataError, match=r"3d.tif: a 3d cutout must have 3 axes \(ZYX\), got "
                                        r"shape \(16, 16\).*cutout.size_3d"):
        CutoutDataset(rows, root, "3d", shape=SIZE_3D[1:])


def test_seeded_loader_order_follows_seed(cutouts):
    root, manifest = cutouts
    dataset = CutoutDataset(load_manifest(manifest, "train", "2d"), root, "2d")

    def labels_and_first_pixel(seed):
        loader = make_loader(dataset, batch_size=2, seed=seed, shuffle=True, num_samples=4)
        return [tuple(x[:, 0, 0, 0].tolist()) for x, _ in loader]

    first = labels_and_first_pixel(3)
    assert len(first) == 2  # num_samples bounds the epoch
    assert first == labels_and_first_pixel(3)
    assert any(labels_and_first_pixel(s) != first for s in (4, 5, 6))


class Labelled(torch.utils.data.Dataset):
    """Items are their own index; 10 % of them are inhibitory."""

    def __init__(self, n: int = 100) -> None:
        self.labels = np.array([1 if i % 10 == 0 else 0 for i in range(n)], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return torch.tensor(index), torch.tensor(self.labels[index])


def test_balanced_sampler_draws_classes_near_half_and_half():
    dataset = Labelled()
    loader = make_loader(dataset, batch_size=50, seed=0, shuffle=True, num_samples=2000,
                         sampler="balanced")
    batches = list(loader)
    drawn = torch.cat([y for _, y in batches])
    assert len(drawn) == 2000
    assert 0.45 < drawn.float().mean().item() < 0.55
    random = torch.cat([y for _, y in make_loader(dataset, 50, 0, shuffle=True)])
    assert random.float().mean().item() == pytest.approx(0.1)
    # The sampler follows the loader's generator: same seed, same draws.
    again = make_loader(dataset, 50, 0, shuffle=True, num_samples=2000, sampler="balanced")
    assert torch.equal(torch.cat([i for i, _ in again]), torch.cat([i for i, _ in batches]))
    with pytest.raises(DataError, match="weighted"):
        make_loader(dataset, 50, 0, shuffle=True, sampler="weighted")


def test_the_dataset_reads_each_synapse_from_its_stack(raw_volume, tmp_path):
    path, _, _, synapses = raw_volume
    manifest, _ = gather(cut_all(plan_shards(synapses, 3), path, tmp_path), tmp_path)
    shuffled = list(np.random.default_rng(0).permutation(len(manifest)))
    for kind in ("2d", "3d"):
        dataset = CutoutDataset(manifest, tmp_path, kind)
        assert len(dataset.stacks) == 3
        expected = np.stack([stored(tmp_path, row, kind) for row in manifest.itertuples()])
        np.testing.assert_array_equal(dataset.read_many(shuffled), expected[shuffled])
        batch = dataset.__getitems__(shuffled)
        for index, (x, y) in zip(shuffled, batch):
            assert torch.equal(x[0], torch.from_numpy(expected[index]))
            assert x.dtype == torch.uint8 and int(y) == int(dataset.labels[index])
        preloaded = CutoutDataset(manifest, tmp_path, kind, preload=True)
        np.testing.assert_array_equal(preloaded.read_many(shuffled), expected[shuffled])
