"""Manifest selection, cutout datasets, augmentations and seeded loaders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

from synapse_ei.cutout.stacks import write_stack
from synapse_ei.errors import DataError
from synapse_ei.learn.dataset import CutoutDataset, load_manifest, make_loader, open_cutout
from synapse_ei.learn.transforms import (
    AUGMENTATIONS,
    build_transforms,
    NORM_MEAN,
    NORM_STD,
    SECTION_AUGMENTATIONS,
    to_model_input,
)

SIZE_2D = (32, 32)  # (Y, X) as stored
SIZE_3D = (8, 16, 16)  # (Z, Y, X) as stored


def write_cutouts(root: Path, n: int = 12) -> Path:
    """n cutouts (a 2D and a 3D stack) with values 40..200 and a manifest; every 4th is
    inhibitory."""
    rng = np.random.default_rng(0)
    for kind, shape in (("2d", SIZE_2D), ("3d", SIZE_3D)):
        write_stack(root / f"shards/000/{kind}.tif", kind,
                    rng.integers(40, 201, (n, *shape), dtype=np.uint8))
    rows = []
    for i in range(n):
        label = "inhibitory" if i % 4 == 0 else "excitatory"
        split = "train" if i < n // 2 else ("val" if i < 3 * n // 4 else "test")
        rows.append({"id": 1000 + i, "pre_pt_root_id": 864691135000000000 + i, "split": split,
                     "label": label, "path_2d": "shards/000/2d.tif",
                     "path_3d": "shards/000/3d.tif", "stack_index": i})
    manifest = root / "manifest.parquet"
    pd.DataFrame(rows).to_parquet(manifest, index=False)
    return manifest


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


ALL_2D = [name for name in AUGMENTATIONS if name not in SECTION_AUGMENTATIONS]


@pytest.mark.parametrize(
    ("kind", "shape", "augmentations"),
    [("2d", SIZE_2D, None), ("3d", SIZE_3D, None), ("2d", SIZE_2D, ALL_2D),
     ("3d", SIZE_3D, AUGMENTATIONS)],
)
def test_augmentations_keep_shape_dtype_label(cutouts, kind, shape, augmentations):
    root, manifest = cutouts
    rows = load_manifest(manifest, "train", kind)
    chosen = {} if augmentations is None else {"augmentations": augmentations}
    transform = build_transforms(kind, train=True, strength=2.0 if chosen else 1.0, **chosen)
    dataset = CutoutDataset(rows, root, kind, transform=transform)
    plain = CutoutDataset(rows, root, kind)
    torch.manual_seed(0)
    for index in range(len(dataset)):
        x, y = dataset[index]
        assert x.shape == (1, *shape) and x.dtype == torch.float32
        assert torch.isfinite(x).all()
        assert int(y) == int(plain[index][1])
        assert not torch.equal(x, plain[index][0].float() / 255)


def test_2d_rotation_is_not_limited_to_right_angles():
    image = torch.zeros(1, 15, 15)
    image[0, 7, 7:] = 1.0  # a line from the centre to the right edge
    transform = build_transforms("2d", train=True, strength=0.0)
    right_angles = [torch.rot90(f, k, dims=(1, 2)) for f in (image, image.flip(2))
                    for k in range(4)]
    torch.manual_seed(0)
    outputs = [transform(image) for _ in range(10)]
    off_grid = [
        o for o in outputs if not any(torch.allclose(o, r, atol=1e-3) for r in right_angles)
    ]
    assert len(off_grid) >= 5


def test_3d_sections_share_one_in_plane_transform():
    section = torch.rand(1, 1, 16, 16)
    cube = section.expand(1, 8, 16, 16).clone()
    transform = build_transforms("3d", train=True, strength=0.0)
    torch.manual_seed(1)
    changed = 0
    for _ in range(6):
        out = transform(cube)
        assert out.shape == cube.shape
        torch.testing.assert_close(out, out[:, :1].expand_as(out))  # all sections identical
        changed += not torch.allclose(out, cube)
    assert changed > 0


def test_3d_z_flip_reverses_sections():
    cube = torch.linspace(0.1, 0.9, 8).view(1, 8, 1, 1).expand(1, 8, 16, 16).clone()
    transform = build_transforms("3d", train=True, strength=0.0)
    torch.manual_seed(0)
    orders = set()
    for _ in range(12):
        centre = transform(cube)[0, :, 8, 8]
        orders.add(bool(centre[0] > centre[-1]))
    assert orders == {True, False}


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


def test_section_augmentations_need_a_3d_model():
    with pytest.raises(DataError, match=r"section_slip.*2D"):
        build_transforms("2d", train=True, augmentations=["flip", "section_slip"])
    with pytest.raises(DataError, match="cutout"):
        build_transforms("3d", train=True, augmentations=["cutout"])
    x = torch.rand(1, 4, 8, 8)
    for nothing in ({"augmentations": []}, {"augmentations": ["noise"], "strength": 0.0}):
        assert torch.equal(build_transforms("3d", train=True, **nothing)(x), x)
    # A single op without any in-plane one works too.
    torch.manual_seed(0)
    for only in ("noise", "missing_section"):
        out = build_transforms("3d", train=True, strength=5.0, augmentations=[only])(x)
        assert out.shape == x.shape and not torch.equal(out, x)


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


@pytest.mark.parametrize(("kind", "augmentations"), [("2d", ALL_2D), ("3d", AUGMENTATIONS)])
def test_every_augmentation_runs_on_the_device_batch(cutouts, kind, augmentations):
    """augment_on: device applies the transforms to the uint8 batch after the copy to the device
    (the CPU here, a GPU in training): every op keeps the shape and stays finite."""
    root, manifest = cutouts
    rows = load_manifest(manifest, "train", kind)
    loader = make_loader(CutoutDataset(rows, root, kind), batch_size=4, seed=0, shuffle=True)
    batch, _ = next(iter(loader))
    assert batch.dtype == torch.uint8
    transform = build_transforms(kind, train=True, strength=2.0, augmentations=augmentations)
    torch.manual_seed(0)
    x = to_model_input(batch, torch.device("cpu"), transform=transform)
    assert x.shape == batch.shape and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert not torch.equal(x, to_model_input(batch, torch.device("cpu")))
