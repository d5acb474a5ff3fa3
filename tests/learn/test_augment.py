"""The batched augmentations, op by op, and MixUp/CutMix around an intact centre."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from kornia.filters import gaussian_blur2d

from synapse_ei.learn import augment
from synapse_ei.learn.augment import (
    _elastic_field,
    AUGMENTATIONS,
    BatchAugmentation,
    blur_matrices,
    centre_margins,
    copy_sections_last,
    linear_grid,
    MID_GREY,
    mix_batch,
    SECTION_AUGMENTATIONS,
)
from synapse_ei.learn.losses import one_hot

OPS_2D = [name for name in AUGMENTATIONS if name not in SECTION_AUGMENTATIONS]


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def cubes(n: int = 4, depth: int = 6, size: int = 16) -> torch.Tensor:
    """(N, 1, D, H, W) in [0.1, 0.9], every section distinct."""
    return 0.1 + 0.8 * torch.rand(n, 1, depth, size, size, generator=seeded(0))


def only(op: str, kind: str = "3d", strength: float = 1.0) -> BatchAugmentation:
    return BatchAugmentation(kind, [op], strength)


def still(augmentation: BatchAugmentation, shape, **changes):
    """A draw for ``shape`` that leaves the batch as it is but for ``changes``."""
    draw = BatchAugmentation(augmentation.kind, [], 1.0).draw(shape, seeded())
    return replace(draw, **changes) if changes else draw


@pytest.mark.parametrize(("kind", "shape"), [("2d", (5, 1, 24, 24)), ("3d", (5, 1, 6, 24, 24))])
@pytest.mark.parametrize("raw", [False, True])
def test_every_op_keeps_shape_dtype_range_and_leaves_the_input(kind, shape, raw):
    names = OPS_2D if kind == "2d" else list(AUGMENTATIONS)
    x = torch.randint(20, 236, shape, dtype=torch.uint8, generator=seeded(1))
    x = x if raw else x.float() / 255
    before = x.clone()
    for name in [*[[n] for n in names], names]:
        out = BatchAugmentation(kind, name, strength=4.0)(x, seeded(2))
        assert out.shape == x.shape and out.dtype == torch.float32, name
        assert 0.0 <= out.min() and out.max() <= 1.0, name
        scaled = x.float() / 255 if raw else x
        assert not torch.allclose(out, scaled), name
        assert torch.equal(x, before), name


def test_no_ops_only_scales():
    x = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
    nothing = BatchAugmentation("2d", [], 1.0)
    assert not nothing
    torch.testing.assert_close(nothing(x), x.float() / 255)
    floats = x.float() / 255
    assert nothing(floats) is floats
    # Strength 0 keeps flips and rotation only; section ops need cubes.
    assert BatchAugmentation("3d", AUGMENTATIONS, 0.0).ops == {"flip", "rotate"}
    assert BatchAugmentation("2d", AUGMENTATIONS, 1.0).ops == set(OPS_2D)


def test_draws_are_seeded_and_per_sample():
    x = torch.full((8, 1, 4, 16, 16), 0.5)
    x[..., 3:8, 2:5] = 0.9  # an asymmetric bar: every flip or rotation moves it
    augmentation = BatchAugmentation("3d", AUGMENTATIONS, 1.0)
    first = augmentation(x, seeded(3))
    assert torch.equal(first, augmentation(x, seeded(3)))
    assert not torch.equal(first, augmentation(x, seeded(4)))
    assert len({tuple(sample.flatten().tolist()) for sample in first}) == len(x)
    # Without a generator the draw follows torch's global one (a seeded run replays it).
    torch.manual_seed(5)
    again = augmentation(x)
    torch.manual_seed(5)
    assert torch.equal(again, augmentation(x))


def test_the_odds_and_ranges_of_the_draws():
    augmentation = BatchAugmentation("3d", AUGMENTATIONS, 1.0)
    draw = augmentation.draw((4000, 1, 8, 32, 32), seeded(6))
    for flag, odds in ((draw.flip_x, 0.5), (draw.flip_y, 0.5), (draw.flip_z, 0.5),
                       (draw.elastic, 0.5), (draw.blur_sigma > 0, 0.3),
                       (draw.slip_section >= 0, 0.3), (draw.missing_section >= 0, 0.2),
                       ((draw.section_contrast != 1).any(dim=1), 0.5)):
        assert abs(flag.float().mean().item() - odds) < 0.03
    assert -math.pi <= draw.angle.min() < -3.0 and 3.0 < draw.angle.max() <= math.pi
    assert ((0.85 <= draw.brightness) & (draw.brightness <= 1.15)).all()
    slipped = draw.slip_shift[draw.slip_section >= 0]
    assert slipped.abs().max() == 3 and (slipped.abs().sum(dim=1) > 0).all()
    assert draw.noise_sigma == pytest.approx(0.03)


def _bar_angle(image: torch.Tensor) -> float:
    """Direction (radians, x right, y down) from the centre to the bright bar's centroid."""
    weight = (image - MID_GREY).clamp(min=0)
    height, width = image.shape
    ys, xs = torch.meshgrid(torch.arange(height) - (height - 1) / 2,
                            torch.arange(width) - (width - 1) / 2, indexing="ij")
    return math.atan2((weight * ys).sum().item(), (weight * xs).sum().item())


@pytest.mark.parametrize("kind", ["2d", "3d"])
def test_the_rotation_angle_is_recovered_from_a_synthetic_pattern(kind):
    size = 65
    image = torch.full((size, size), MID_GREY)
    image[31:34, 36:60] = 1.0  # a bar from near the centre towards +x
    shape = (12, 1, size, size) if kind == "2d" else (12, 1, 3, size, size)
    x = image.expand(shape).clone()
    augmentation = only("rotate", kind)
    draw = augmentation.draw(shape, seeded(7))
    assert not (draw.flip_x | draw.flip_y).any()
    out = augmentation.apply(x, draw)
    for i, angle in enumerate(draw.angle.tolist()):
        planes = out[i].reshape(-1, size, size)
        for plane in planes:  # every section turned alike
            error = (_bar_angle(plane) - angle + math.pi) % (2 * math.pi) - math.pi
            assert abs(error) < math.radians(1.5)
    assert (draw.angle.abs() % (math.pi / 2) > 0.1).any()  # not only right angles


def test_flips_are_exact_mirrors():
    x = cubes()
    augmentation = BatchAugmentation("3d", ["flip"], 1.0)
    n = len(x)
    yes, no = torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)
    for changes, expected in (({"flip_x": yes}, x.flip(-1)), ({"flip_y": yes}, x.flip(-2)),
                              ({"flip_z": yes}, x.flip(2)),
                              ({"flip_x": yes, "flip_y": yes, "flip_z": yes},
                               x.flip(-1, -2, 2))):
        draw = still(augmentation, x.shape, **{"flip_x": no, "flip_y": no, "flip_z": no,
                                               **changes})
        torch.testing.assert_close(augmentation.apply(x, draw), expected, atol=1e-5, rtol=0)


def test_cube_sections_share_one_in_plane_transform():
    section = torch.rand(4, 1, 1, 20, 20, generator=seeded(8))
    cube = section.expand(4, 1, 8, 20, 20).clone()
    geometric = BatchAugmentation("3d", ["flip", "rotate", "elastic"], 1.0)
    out = geometric(cube, seeded(9))
    torch.testing.assert_close(out, out[:, :, :1].expand_as(out))
    assert not torch.allclose(out, cube)


def test_the_centre_stays_at_the_centre():
    """Every geometric op turns, mirrors or deforms about the cutout's centre, where the
    synapse is: a blob there stays there (within the elastic field's pixel and a slip)."""
    size = 33
    ys, xs = torch.meshgrid(torch.arange(size) - 16.0, torch.arange(size) - 16.0,
                            indexing="ij")
    blob = MID_GREY + 0.5 * torch.exp(-(xs**2 + ys**2) / (2 * 3.0**2))
    x = blob.expand(16, 1, 4, size, size).clone()
    augmentation = BatchAugmentation("3d", ["flip", "rotate", "elastic", "section_slip"], 1.0)
    out = augmentation(x, seeded(10))
    weight = (out - MID_GREY).clamp(min=0)
    total = weight.sum(dim=(-2, -1))
    cy = (weight * ys).sum(dim=(-2, -1)) / total
    cx = (weight * xs).sum(dim=(-2, -1)) / total
    distance = (cx**2 + cy**2).sqrt()
    assert distance.max() <= 3.0 * math.sqrt(2) + 0.5  # a slipped section: up to 3 px each way
    assert distance.median() < 1.0


def test_section_slip_shifts_one_section_by_whole_pixels():
    x = cubes()
    augmentation = only("section_slip")
    draw = still(augmentation, x.shape, slip_section=torch.tensor([2, -1, 0, 5]),
                 slip_shift=torch.tensor([[2, -1], [1, 1], [-3, 0], [0, 2]]))
    out = augmentation.apply(x, draw)
    for i, (section, (dx, dy)) in enumerate(zip([2, -1, 0, 5], [(2, -1), (1, 1), (-3, 0),
                                                                (0, 2)])):
        for d in range(x.shape[2]):
            if d != section:
                torch.testing.assert_close(out[i, 0, d], x[i, 0, d], atol=1e-5, rtol=0)
        if section < 0:
            continue
        # Output pixel (y, x) shows input pixel (y - dy, x - dx); edges come in mid-grey.
        moved = out[i, 0, section]
        shifted = torch.roll(x[i, 0, section], shifts=(dy, dx), dims=(0, 1))
        torch.testing.assert_close(moved[3:-3, 3:-3], shifted[3:-3, 3:-3], atol=1e-5, rtol=0)
        edge = moved[:, 0] if dx > 0 else (moved[:, -1] if dx < 0 else
                                            (moved[0] if dy > 0 else moved[-1]))
        torch.testing.assert_close(edge, torch.full_like(edge, MID_GREY), atol=1e-5, rtol=0)


def test_missing_section_is_a_neighbour_or_blank():
    x = cubes()
    augmentation = only("missing_section")
    draw = still(augmentation, x.shape, missing_section=torch.tensor([0, 3, 5, -1]),
                 missing_step=torch.tensor([1, 0, -1, 0]))
    out = augmentation.apply(x, draw)
    changed = [[d for d in range(6) if not torch.equal(out[i, 0, d], x[i, 0, d])]
               for i in range(4)]
    assert changed == [[0], [3], [5], []]
    assert torch.equal(out[0, 0, 0], x[0, 0, 1])
    assert torch.all(out[1, 0, 3] == MID_GREY)
    assert torch.equal(out[2, 0, 5], x[2, 0, 4])
    draw = only("missing_section", strength=5.0).draw(x.shape, seeded(11))
    assert (draw.missing_section >= 0).all()
    steps = draw.missing_step[draw.missing_section == 0]
    assert (steps >= 0).all()  # the first section copies the second, never a section -1


def test_section_intensity_changes_sections_independently():
    x = torch.full((2, 1, 4, 8, 8), 0.6)
    augmentation = only("section_intensity")
    draw = augmentation.draw(x.shape, seeded(12))
    draw = replace(draw, section_contrast=torch.tensor([[1.1, 0.9, 1.0, 1.05]] * 2),
                   section_brightness=torch.tensor([[0.05, -0.05, 0.0, 0.02]] * 2))
    out = augmentation.apply(x, draw)
    expected = (0.6 - MID_GREY) * torch.tensor([1.1, 0.9, 1.0, 1.05]) + MID_GREY + torch.tensor(
        [0.05, -0.05, 0.0, 0.02])
    torch.testing.assert_close(out[:, 0, :, 3, 3], expected.expand(2, 4))
    torch.testing.assert_close(out, out[..., :1, :1].expand_as(out))  # uniform in a section


def test_intensity_scales_brightness_and_contrast_about_the_mean():
    x = torch.tensor([0.2, 0.4, 0.6, 0.8]).view(1, 1, 2, 2).repeat(2, 1, 1, 1)
    augmentation = only("intensity", "2d")
    draw = replace(augmentation.draw(x.shape, seeded(13)), brightness=torch.tensor([1.1, 1.0]),
                   contrast=torch.tensor([1.0, 0.5]))
    out = augmentation.apply(x, draw)
    torch.testing.assert_close(out[0], x[0] * 1.1)
    torch.testing.assert_close(out[1], (x[1] - 0.5) * 0.5 + 0.5)


def test_noise_has_the_configured_spread():
    x = torch.full((4, 1, 8, 64, 64), 0.5)
    out = only("noise", strength=2.0)(x, seeded(14))
    assert (out - x).std().item() == pytest.approx(0.06, rel=0.03)
    assert abs((out - x).mean().item()) < 0.002


def test_blur_smooths_the_samples_that_draw_it():
    x = torch.rand(3, 1, 4, 24, 24, generator=seeded(15))
    augmentation = only("blur", strength=1.0)
    draw = replace(augmentation.draw(x.shape, seeded(16)),
                   blur_sigma=torch.tensor([0.0, 0.5, 1.0]))
    out = augmentation.apply(x, draw)
    assert torch.equal(out[0], x[0])
    spreads = [out[i].std().item() for i in range(3)]
    assert spreads[0] > spreads[1] > spreads[2]


@pytest.mark.parametrize("kind, shape", [("2d", (5, 1, 24, 24)), ("3d", (5, 1, 4, 24, 24))])
def test_the_batch_is_the_same_a_few_cutouts_at_a_time(kind, shape, monkeypatch):
    """On the CPU the blur, the conversion and intensity map after the copy, and the clip after
    the noise run a few cutouts per call (``CHUNK_VALUES``); the batch is the same as in one
    (to the rounding: oneDNN may sum a convolution's taps in another order for another count
    of channels)."""
    x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=seeded(15))
    augmentation = BatchAugmentation(kind, AUGMENTATIONS)
    draw = replace(augmentation.draw(x.shape, seeded(16)),
                   blur_sigma=torch.tensor([0.3, 0.0, 0.5, 1.0, 0.8]))
    monkeypatch.setattr(augment, "CHUNK_VALUES", 10**9)
    whole = augmentation.apply(x, draw)
    for cutouts in (1, 2):
        monkeypatch.setattr(augment, "CHUNK_VALUES", cutouts * math.prod(shape[1:]))
        torch.testing.assert_close(augmentation.apply(x, draw), whole, rtol=0, atol=1e-6)


def test_elastic_moves_pixels_by_about_a_pixel():
    size = 64
    ramp = torch.linspace(0, 1, size).view(1, 1, 1, size).expand(8, 1, size, size).clone()
    augmentation = only("elastic", "2d")
    draw = replace(augmentation.draw(ramp.shape, seeded(17)),
                   elastic=torch.ones(8, dtype=torch.bool))
    out = augmentation.apply(ramp, draw)
    # On a ramp of 1/63 per pixel, the value change is the x displacement in pixels / 63.
    moved = ((out - ramp)[..., 8:-8, 8:-8].abs() * (size - 1))
    assert 0.1 < moved.mean().item() < 2.0 and moved.max().item() < 6.0


@pytest.mark.parametrize("shape", [(6, 1, 16, 16), (6, 1, 4, 16, 16)])
def test_cutmix_leaves_the_centre_intact_and_mixes_labels_by_area(shape):
    n = shape[0]
    # Sample i is the constant i + 1, so every output pixel names the sample it came from.
    x = torch.arange(1.0, n + 1).view(n, *([1] * (len(shape) - 1))).expand(shape).clone()
    labels = torch.tensor([0, 1, 0, 0, 1, 0])
    margin_y, margin_x = centre_margins(16, 16)
    centre = (..., slice(margin_y, 16 - margin_y), slice(margin_x, 16 - margin_x))
    pasted_any = False
    for seed in range(8):
        torch.manual_seed(seed)
        out, target = mix_batch(x, one_hot(labels), cutmix_alpha=1.0)
        assert out.shape == x.shape and out.dtype == x.dtype
        torch.testing.assert_close(out[centre], x[centre])
        torch.testing.assert_close(target.sum(dim=1), torch.ones(n))
        for i in range(n):
            own = (out[i] == i + 1).float().mean().item()
            others = out[i][out[i] != i + 1].unique()
            assert len(others) <= 1  # one partner per sample
            partner = labels[int(others[0]) - 1] if len(others) else labels[i]
            expected = own * one_hot(labels[i:i + 1])[0] + (1 - own) * one_hot(partner[None])[0]
            torch.testing.assert_close(target[i], expected)
            pasted_any |= own < 1
    assert pasted_any


def test_mixup_keeps_each_cutout_dominant_and_mixes_labels_alike():
    x = torch.stack([torch.zeros(1, 4, 8, 8), torch.ones(1, 4, 8, 8)])
    labels = torch.tensor([0, 1])
    mixed_any = False
    for seed in range(8):
        torch.manual_seed(seed)
        out, target = mix_batch(x, one_hot(labels), mixup_alpha=0.4)
        partner_share = out[0].unique()  # sample 0 is 0, sample 1 is 1: the share is the value
        assert len(partner_share) == 1 and partner_share.item() <= 0.5
        torch.testing.assert_close(target[0, 1], partner_share[0])
        torch.testing.assert_close(out[1], 1 - out[0])
        mixed_any |= partner_share.item() > 0
    assert mixed_any


def test_mix_batch_is_a_no_op_when_off():
    x, target = torch.rand(4, 1, 8, 8), one_hot(torch.tensor([0, 1, 0, 1]))
    out, mixed = mix_batch(x, target)
    assert out is x and mixed is target


def test_pixels_from_outside_are_mid_grey_whatever_the_intensity_ops():
    """A turn brings pixels in from outside the cutout: they are mid-grey, not a grey that the
    brightness, contrast or a section's intensity then shifted."""
    x = torch.full((6, 1, 4, 32, 32), 0.9)
    augmentation = BatchAugmentation("3d", ["rotate", "intensity", "section_intensity"], 2.0)
    draw = replace(augmentation.draw(x.shape, seeded(18)),
                   angle=torch.full((6,), math.pi / 4))
    assert (draw.brightness != 1).all() and (draw.section_contrast != 1).any()
    out = augmentation.apply(x, draw)
    torch.testing.assert_close(out[..., 0, 0], torch.full_like(out[..., 0, 0], MID_GREY))
    inside = out[..., 16, 16]
    assert (inside - MID_GREY).abs().min() > 0.1  # the content itself was changed


@pytest.mark.parametrize("kind, shape", [("2d", (5, 1, 24, 24)), ("3d", (5, 1, 4, 24, 24))])
def test_an_autocast_region_around_the_call_changes_nothing(kind, shape):
    """A training loop may call the augmentation inside its bf16 autocast region: the batch
    comes out as without it, float32, every op on."""
    augmentation = BatchAugmentation(kind, AUGMENTATIONS if kind == "3d" else OPS_2D, 1.0)
    x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=seeded(23))
    draw = replace(augmentation.draw(x.shape, seeded(24)), blur_sigma=torch.full((5,), 0.7))
    expected = augmentation.apply(x, draw)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = augmentation.apply(x, draw)
    assert out.dtype == torch.float32
    assert torch.equal(out, expected)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("kind, shape", [("2d", (0, 1, 24, 24)), ("3d", (0, 1, 4, 24, 24))])
def test_an_empty_batch_comes_back_empty(kind, shape, dtype):
    """A user's own loop may filter a batch down to nothing: every op on, the result is an
    empty float batch of the same shape, not an error."""
    augmentation = BatchAugmentation(kind, AUGMENTATIONS if kind == "3d" else OPS_2D, 1.0)
    out = augmentation(torch.zeros(shape, dtype=dtype), seeded(25))
    assert out.shape == shape and out.dtype == torch.float32


def test_a_batch_is_not_changed_by_the_next_one():
    """The augmentation reuses buffers between batches; what it returned stays as it was."""
    augmentation = BatchAugmentation("3d", AUGMENTATIONS, 1.0)
    first_input = torch.randint(0, 256, (3, 1, 4, 16, 16), dtype=torch.uint8,
                                generator=seeded(19))
    first = augmentation(first_input, seeded(20))
    kept = first.clone()
    augmentation(torch.randint(0, 256, first_input.shape, dtype=torch.uint8,
                               generator=seeded(21)), seeded(22))
    assert torch.equal(first, kept)
    fresh = BatchAugmentation("3d", AUGMENTATIONS, 1.0)(first_input, seeded(20))
    assert torch.equal(first, fresh)


def test_noise_is_independent_within_and_across_samples_and_replays():
    x = torch.full((16, 1, 4, 64, 64), 0.5)
    augmentation = only("noise")
    noise = (augmentation(x, seeded(30)) - x).flatten(1)
    assert noise.std().item() == pytest.approx(0.03, rel=0.03)
    # No two samples share their noise at the same voxel, and neighbours are uncorrelated.
    correlation = torch.corrcoef(noise)
    off_diagonal = correlation[~torch.eye(len(noise), dtype=torch.bool)]
    assert off_diagonal.abs().max() < 0.1
    first = noise[0]
    assert abs(torch.corrcoef(torch.stack([first[:-1], first[1:]]))[0, 1]) < 0.04
    assert torch.equal(augmentation(x, seeded(30)) - x, noise.view(x.shape))
    assert not torch.equal(augmentation(x, seeded(31)) - x, noise.view(x.shape))


needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_gpu
@pytest.mark.parametrize("kind, shape", [("2d", (8, 1, 64, 64)), ("3d", (8, 1, 8, 64, 64))])
def test_on_the_gpu_no_op_makes_the_host_wait(kind, shape):
    """On the GPU (``augment_on: device``) a batch is augmented while the training step queued
    before it still runs there; an op that waits for the GPU (a copy from pageable memory, a
    test of a value there) stalls the host behind that step on every batch."""
    x = torch.randint(0, 256, shape, dtype=torch.uint8, device="cuda")
    target = one_hot(torch.randint(2, (shape[0],))).cuda()
    names = AUGMENTATIONS if kind == "3d" else OPS_2D
    augment = BatchAugmentation(kind, names, 1.0)
    augment(x, seeded(0))  # the first call allocates its buffers and pinned blocks
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for seed in range(4):  # every op fires in some of these draws
            out = augment(x, seeded(seed))
            mix_batch(out, target, 0.4, 0.0)
            mix_batch(out, target, 0.0, 1.0)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@needs_gpu
@pytest.mark.parametrize("kind, shape", [("2d", (6, 1, 32, 32)), ("3d", (6, 1, 6, 32, 32))])
def test_the_gpu_gives_what_the_cpu_gives_for_one_draw(kind, shape, monkeypatch):
    """The same code on both: one draw applied on the CPU and on the GPU gives the same batch
    (the noise and elastic fields are drawn on the device, so those two are left out)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # the blur's convolution
    names = [n for n in (AUGMENTATIONS if kind == "3d" else OPS_2D)
             if n not in ("noise", "elastic")]
    augment = BatchAugmentation(kind, names, 1.0)
    x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=seeded(1))
    for seed in range(3):
        draw = augment.draw(x.shape, seeded(seed))
        on_cpu = augment.apply(x, draw)
        on_gpu = augment.apply(x.cuda(), draw).cpu()
        assert (on_gpu - on_cpu).abs().max() < 1e-4


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("chunk", [1, 2, 10**6])
def test_the_sections_last_copy_is_the_batch_whatever_the_threads(dtype, threads, chunk,
                                                                   monkeypatch):
    """The resampling's input on the CPU: each sample's sections moved innermost, those of the
    z-flipped samples in reverse order, the batch split over the intra-op threads (an odd
    batch: unequal shares); ``then`` runs once on every sample, in slices of at most
    ``CHUNK_VALUES`` values (or one sample), each after its samples' copies; the copy threads
    run torch's ops on one intra-op thread each, the count put back after."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    counts = []
    monkeypatch.setattr(torch, "set_num_threads", counts.append)
    planes = torch.randint(0, 256, (5, 32, 12, 20), generator=seeded(3)).to(dtype)
    monkeypatch.setattr(augment, "CHUNK_VALUES", chunk * planes[0].numel())
    parts = min(threads, math.ceil(5 / chunk))  # a thread per chunk at most
    reverse = [False, True, True, False, True]
    expected = torch.stack([p.flip(0) if r else p for p, r in zip(planes, reverse)])
    for flips, want in ((None, planes), (reverse, expected)):
        out = torch.full(planes.shape, 7, dtype=dtype).contiguous(
            memory_format=torch.channels_last)
        slices = []
        copy_sections_last(planes, out, flips,
                           lambda rows: slices.append((rows, torch.equal(out[rows], want[rows]))))
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(out, want)
        assert all(copied for _, copied in slices)
        covered = sorted(i for rows, _ in slices for i in range(rows.start, rows.stop))
        assert covered == list(range(5))
        assert max(rows.stop - rows.start for rows, _ in slices) <= chunk
    assert counts == ([1, threads] * 2 if parts > 1 else [])


def test_an_error_in_a_copy_thread_reaches_the_caller(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    counts = []
    monkeypatch.setattr(torch, "set_num_threads", counts.append)
    planes = torch.zeros(4, 3, 5, 5, dtype=torch.uint8)
    out = torch.empty_like(planes, memory_format=torch.channels_last)
    monkeypatch.setattr(augment, "CHUNK_VALUES", 2 * 3 * 5 * 5)  # two threads, two cubes each

    def then(rows: slice) -> None:
        if rows.start >= 2:  # the helper thread's share
            raise ValueError("samples 2-3")

    with pytest.raises(ValueError, match="samples 2-3"):
        copy_sections_last(planes, out, None, then)
    assert counts == [1, 2]


@pytest.mark.parametrize("height, width", [(16, 16), (7, 12), (1, 9), (256, 256)])
def test_the_linear_grid_is_affine_grids(height, width):
    """The resampling's grid, built as a sum of a row and a column, is torch's ``affine_grid``
    of the same maps, with its (N, H, W, 2) shape (to the last bit on this CPU; an ulp is
    allowed, where a CPU's matrix product rounds a fused multiply-add once), and
    ``grid_sample`` reads it as it reads affine_grid's: to that ulp, which ``grid_sample``
    scales to pixels (half the width) and then by a value's change per pixel (at most 1)."""
    matrix = torch.randn(6, 2, 2, generator=seeded(1))
    theta = torch.cat([matrix, torch.zeros(6, 2, 1)], dim=2)
    expected = F.affine_grid(theta, [6, 1, height, width], align_corners=False)
    grid = linear_grid(matrix, height, width)
    assert grid.shape == expected.shape
    torch.testing.assert_close(grid, expected, rtol=0, atol=1e-6)
    planes = torch.rand(6, 3, height, width, generator=seeded(2))
    torch.testing.assert_close(F.grid_sample(planes, grid, align_corners=False),
                               F.grid_sample(planes, expected, align_corners=False),
                               rtol=0, atol=1e-6 * max(height, width) / 2 + 1e-6)


@pytest.mark.parametrize("height, width", [(24, 40), (32, 32), (128, 128), (9, 70)])
def test_the_elastic_field_is_kornias_blur_of_the_noise(height, width):
    """The field's smoothing, two matrix products, is kornia's Gaussian blur with reflected
    borders (sigma 5, or less on a small cutout) of the same uniform noise."""
    count, dtype = 3, torch.float32
    sigma = min(5.0, (min(height, width) - 1) / 8)
    kernel = int(8 * sigma + 1)
    kernel += 1 - kernel % 2
    noise = torch.rand(count, 2, height, width, generator=seeded(4)) * 2 - 1
    along_y, along_x = blur_matrices(height, width, kernel, sigma, torch.device("cpu"), dtype)
    torch.testing.assert_close(along_y @ noise @ along_x,
                               gaussian_blur2d(noise, kernel, (sigma, sigma), "reflect"),
                               rtol=0, atol=1e-6)
    field = _elastic_field(count, height, width, seeded(4), torch.device("cpu"), dtype)
    expected = gaussian_blur2d(noise, kernel, (sigma, sigma), "reflect") * 10 * sigma / (
        torch.tensor([width, height]).view(1, 2, 1, 1))
    assert field.shape == (count, height, width, 2)
    torch.testing.assert_close(field, expected.permute(0, 2, 3, 1), rtol=0, atol=1e-6)
