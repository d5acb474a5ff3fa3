"""The transforms: fixed scaling, every augmentation on the loader and on the device."""

from __future__ import annotations

import pytest
import torch

from dataset_helpers import SIZE_2D, SIZE_3D, write_cutouts
from synapse_ei.errors import DataError
from synapse_ei.learn.dataset import CutoutDataset, load_manifest, make_loader
from synapse_ei.learn.transforms import (
    AUGMENTATIONS,
    build_transforms,
    SECTION_AUGMENTATIONS,
    to_model_input,
)

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
