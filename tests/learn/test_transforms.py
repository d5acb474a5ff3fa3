"""The transforms: fixed scaling, the configured augmentations on the loader and on the device."""

from __future__ import annotations

import pytest
import torch

from dataset_helpers import SIZE_2D, SIZE_3D, write_cutouts
from synapse_ei.errors import DataError
from synapse_ei.learn.augment import AUGMENTATIONS, SECTION_AUGMENTATIONS
from synapse_ei.learn.dataset import CutoutDataset, load_manifest, make_loader
from synapse_ei.learn.transforms import build_transforms, to_model_input


@pytest.fixture
def cutouts(tmp_path):
    return tmp_path, write_cutouts(tmp_path)


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


def test_the_default_augmentations_are_the_schemas():
    """build_transforms without names uses the schema's models.<name>.augmentations default."""
    from synapse_ei.config import model_defaults

    assert sorted(build_transforms("3d", train=True).ops) == sorted(
        model_defaults()["augmentations"])
    assert not build_transforms("3d", train=False)


def test_the_schema_lists_every_augmentation():
    import yaml
    from synapse_ei.config import SCHEMA

    schema = yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))
    entry = schema["properties"]["models"]["additionalProperties"]["properties"]
    assert entry["augmentations"]["items"]["enum"] == list(AUGMENTATIONS)


def test_section_augmentations_need_a_3d_model():
    with pytest.raises(DataError, match=r"section_slip.*2D"):
        build_transforms("2d", train=True, augmentations=["flip", "section_slip"])
    with pytest.raises(DataError, match="cutout"):
        build_transforms("3d", train=True, augmentations=["cutout"])
    x = torch.rand(2, 1, 4, 8, 8)
    for nothing in ({"augmentations": []}, {"augmentations": ["noise"], "strength": 0.0}):
        assert torch.equal(build_transforms("3d", train=True, **nothing)(x), x)
    # A single op without any in-plane one works too.
    torch.manual_seed(0)
    for only in ("noise", "missing_section"):
        out = build_transforms("3d", train=True, strength=5.0, augmentations=[only])(x)
        assert out.shape == x.shape and not torch.equal(out, x)


@pytest.mark.parametrize(("kind", "augmentations"), [("2d", ALL_2D), ("3d", AUGMENTATIONS)])
def test_every_augmentation_runs_on_the_device_batch(cutouts, kind, augmentations):
    """augment_on: device applies the augmentations to the whole uint8 batch after the copy to
    the device (the CPU here, a GPU in training): every op keeps the shape and stays finite, and
    the loader path (the dataset's batch read) gives the same batch for the same draw."""
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
    torch.manual_seed(0)
    on_device = to_model_input(batch, torch.device("cpu"), transform=transform)
    torch.manual_seed(0)
    in_loader = transform(batch)
    torch.testing.assert_close(on_device, to_model_input(in_loader, torch.device("cpu")))


def test_loader_workers_replay_the_same_augmented_batches(cutouts):
    """augment_on: loader with workers: each worker augments whole batches with draws seeded
    from the loader's seed, so the same seed gives the same batches and another seed others."""
    root, manifest = cutouts
    rows = load_manifest(manifest, "train", "3d")
    augmented = CutoutDataset(rows, root, "3d", transform=build_transforms("3d", train=True))

    def batches(seed):
        loader = make_loader(augmented, batch_size=3, seed=seed, shuffle=True, num_workers=1)
        return [x for x, _ in loader]

    first = batches(0)
    assert all(x.dtype == torch.float32 and x.shape[1:] == (1, *SIZE_3D) for x in first)
    assert all(torch.equal(a, b) for a, b in zip(first, batches(0)))
    assert not all(torch.equal(a, b) for a, b in zip(first, batches(1)))
