"""Section defects for 3D cubes and MixUp/CutMix around an intact centre."""
from __future__ import annotations

import pytest
import torch

from synapse_ei.learn.augment import (
    centre_margins,
    MID_GREY,
    MissingSection,
    mix_batch,
    SectionIntensity,
    SectionSlip,
)
from synapse_ei.learn.losses import one_hot


def cube(depth: int = 6, size: int = 12) -> torch.Tensor:
    """(1, D, H, W) in [0, 1], every section distinct."""
    return torch.rand(1, depth, size, size, generator=torch.Generator().manual_seed(0))


def test_section_intensity_changes_sections_independently():
    x = torch.full((1, 4, 8, 8), 0.6)
    torch.manual_seed(0)
    out = SectionIntensity(contrast=0.2, brightness=0.1, p=1.0)(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert 0.0 <= out.min() and out.max() <= 1.0
    means = out.mean(dim=(-2, -1)).flatten()
    assert len(set(means.tolist())) == 4  # each section its own change
    torch.testing.assert_close(out, out[..., :1, :1].expand_as(out))  # uniform within a section


def test_section_slip_shifts_exactly_one_section():
    x = cube()
    torch.manual_seed(1)
    out = SectionSlip(max_shift=2, p=1.0)(x)
    changed = [d for d in range(x.shape[1]) if not torch.equal(out[0, d], x[0, d])]
    assert len(changed) == 1
    d = changed[0]
    # The section's content reappears shifted by at most 2 px; edges come in mid-grey.
    found = [
        (dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
        if torch.equal(out[0, d, 2:-2, 2:-2], x[0, d, 2 - dy:10 - dy, 2 - dx:10 - dx])
    ]
    assert found and found != [(0, 0)]
    assert (out[0, d] == MID_GREY).any()


def test_missing_section_is_a_neighbour_or_blank():
    x = cube()
    kinds = set()
    for seed in range(12):
        torch.manual_seed(seed)
        out = MissingSection(p=1.0)(x)
        changed = [d for d in range(x.shape[1]) if not torch.equal(out[0, d], x[0, d])]
        assert len(changed) == 1
        d = changed[0]
        if torch.all(out[0, d] == MID_GREY):
            kinds.add("blank")
        else:
            neighbours = [x[0, n] for n in (d - 1, d + 1) if 0 <= n < x.shape[1]]
            assert any(torch.equal(out[0, d], n) for n in neighbours)
            kinds.add("neighbour")
    assert kinds == {"blank", "neighbour"}


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
