"""EM-specific augmentations: section defects for 3D cubes, and MixUp/CutMix for batches.

Serial-section EM has defects a 2D library does not model: a section's brightness differs from
its neighbours', a section slips a few pixels against the stack, a section is lost (the aligner
then repeats a neighbour, or leaves it blank). The section ops below take a scaled [0, 1] cube
(1, D, H, W) and change one or all sections;
:func:`synapse_ei.learn.transforms.build_transforms` composes them with the torchvision v2
in-plane ops. They draw from torch's global generator, like v2, so
a seeded loader (and its workers) replays them exactly.

:func:`mix_batch` mixes a batch with a shuffled copy of itself. The synapse sits at the cutout's
centre, so CutMix boxes stay in the margin around it and MixUp keeps each cutout's own weight at
least one half; the soft targets are mixed with the same weights.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torchvision.transforms import v2

#: CutMix never pastes into the central box spanning this fraction of each in-plane side.
CUTMIX_CENTRE_FRACTION = 0.5
#: Grey level (on the [0, 1] scale) of blank sections and of pixels shifted in from outside.
MID_GREY = 0.5


def _chance(p: float) -> bool:
    return bool(torch.rand(()) < p)


def _uniform(low: float, high: float, size: tuple[int, ...] = ()) -> torch.Tensor:
    return low + (high - low) * torch.rand(size)


class InPlaneElastic(nn.Module):
    """torchvision's v2.ElasticTransform with a smoothing that fits small cutouts.

    torchvision's default field (alpha 50, sigma 5) moves pixels by about a pixel: membranes
    bend without tearing. Its smoothing kernel (8 sigma + 1 pixels) must fit inside the image,
    so smaller cutouts get a smaller sigma and a proportionally smaller alpha (the same
    displacement). ``strength`` scales alpha.
    """

    def __init__(self, strength: float = 1.0, fill: float = MID_GREY) -> None:
        super().__init__()
        self.strength, self.fill = strength, fill
        self._by_sigma: dict[float, v2.ElasticTransform] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sigma = min(5.0, (min(x.shape[-2:]) - 1) / 8)
        if sigma not in self._by_sigma:
            self._by_sigma[sigma] = v2.ElasticTransform(alpha=10.0 * sigma * self.strength,
                                                        sigma=sigma, fill=self.fill)
        return self._by_sigma[sigma](x)


class SectionIntensity(nn.Module):
    """With probability ``p``, give every section its own contrast and brightness change.

    Section d becomes ``(x_d - 0.5) * c_d + 0.5 + b_d`` with ``c_d`` in ``1 +- contrast`` and
    ``b_d`` in ``+- brightness``, clipped to [0, 1]; contrast pivots on mid-grey.
    """

    def __init__(self, contrast: float, brightness: float, p: float = 0.5) -> None:
        super().__init__()
        self.contrast, self.brightness, self.p = contrast, brightness, p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _chance(self.p):
            return x
        depth = x.shape[-3]
        contrast = _uniform(1 - self.contrast, 1 + self.contrast, (depth, 1, 1)).to(x)
        brightness = _uniform(-self.brightness, self.brightness, (depth, 1, 1)).to(x)
        return ((x - MID_GREY) * contrast + MID_GREY + brightness).clamp(0.0, 1.0)


class SectionSlip(nn.Module):
    """With probability ``p``, shift one section in-plane by up to ``max_shift`` pixels.

    The shift is a whole number of pixels along y and x (not both zero); pixels moved in from
    outside the cutout are mid-grey.
    """

    def __init__(self, max_shift: int, p: float = 0.3) -> None:
        super().__init__()
        self.max_shift, self.p = max(1, int(max_shift)), p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _chance(self.p):
            return x
        depth, height, width = x.shape[-3:]
        section = int(torch.randint(depth, ()))
        dy, dx = 0, 0
        while dy == 0 and dx == 0:
            dy, dx = (int(v) for v in torch.randint(-self.max_shift, self.max_shift + 1, (2,)))
        out = x.clone()
        shifted = torch.full_like(x[..., section, :, :], MID_GREY)
        # Output pixel (y, x) takes input pixel (y - dy, x - dx) where that lies inside.
        src_y = slice(max(0, -dy), height - max(0, dy))
        dst_y = slice(max(0, dy), height + min(0, dy))
        src_x = slice(max(0, -dx), width - max(0, dx))
        dst_x = slice(max(0, dx), width + min(0, dx))
        shifted[..., dst_y, dst_x] = x[..., section, src_y, src_x]
        out[..., section, :, :] = shifted
        return out


class MissingSection(nn.Module):
    """With probability ``p``, replace one section by a neighbour's copy or by blank mid-grey."""

    def __init__(self, p: float = 0.2) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        depth = x.shape[-3]
        if depth < 2 or not _chance(self.p):
            return x
        section = int(torch.randint(depth, ()))
        out = x.clone()
        if _chance(0.5):
            out[..., section, :, :] = MID_GREY
        else:
            step = 1 if section == 0 else (-1 if section == depth - 1 else
                                           (1 if _chance(0.5) else -1))
            out[..., section, :, :] = x[..., section + step, :, :]
        return out


def _beta(alpha: float) -> float:
    concentration = torch.tensor(float(alpha))
    return float(torch.distributions.Beta(concentration, concentration).sample())


def centre_margins(height: int, width: int) -> tuple[int, int]:
    """Widths (y, x) of the frame around the protected centre that CutMix may paste into."""
    return (int(height * (1 - CUTMIX_CENTRE_FRACTION)) // 2,
            int(width * (1 - CUTMIX_CENTRE_FRACTION)) // 2)


def _cutmix_box(height: int, width: int, lam: float) -> tuple[slice, slice]:
    """A box of about ``(1 - lam)`` of the plane inside one side's margin (may be empty)."""
    margin_y, margin_x = centre_margins(height, width)
    sides = [side for side, margin in (("top", margin_y), ("bottom", margin_y),
                                       ("left", margin_x), ("right", margin_x)) if margin > 0]
    if not sides:
        return slice(0, 0), slice(0, 0)
    side = sides[int(torch.randint(len(sides), ()))]
    ratio = math.sqrt(1.0 - lam)
    box_h, box_w = round(height * ratio), round(width * ratio)
    if side in ("top", "bottom"):
        box_h = min(box_h, margin_y)
        y0 = int(torch.randint(margin_y - box_h + 1, ()))
        y0 = y0 if side == "top" else height - margin_y + y0
        x0 = int(torch.randint(width - box_w + 1, ()))
    else:
        box_w = min(box_w, margin_x)
        x0 = int(torch.randint(margin_x - box_w + 1, ()))
        x0 = x0 if side == "left" else width - margin_x + x0
        y0 = int(torch.randint(height - box_h + 1, ()))
    return slice(y0, y0 + box_h), slice(x0, x0 + box_w)


def mix_batch(
    x: torch.Tensor, target: torch.Tensor, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """MixUp or CutMix of a batch with a shuffled copy of itself; soft targets mixed alike.

    ``x`` is (N, C, H, W) or (N, C, D, H, W), ``target`` (N, classes). An alpha of 0 turns that
    method off; with both on, each batch uses one of them, chosen with equal odds. MixUp draws
    ``lam ~ Beta(alpha, alpha)`` and keeps ``max(lam, 1 - lam)`` as the cutout's own weight, so
    the own synapse always dominates. CutMix pastes the partner's box (through every section)
    into one side of the margin around the central :data:`CUTMIX_CENTRE_FRACTION` box, so the
    synapse at the centre is untouched; the targets mix by the pasted area.
    """
    methods = [name for name, alpha in (("mixup", mixup_alpha), ("cutmix", cutmix_alpha))
               if alpha > 0]
    if not methods or len(x) < 2:
        return x, target
    method = methods[int(torch.randint(len(methods), ()))]
    partner = torch.randperm(len(x)).to(x.device)
    if method == "mixup":
        lam = _beta(mixup_alpha)
        lam = max(lam, 1.0 - lam)
        mixed = x * lam + x[partner] * (1.0 - lam)
    else:
        height, width = x.shape[-2:]
        rows, cols = _cutmix_box(height, width, _beta(cutmix_alpha))
        mixed = x.clone()
        mixed[..., rows, cols] = x[partner][..., rows, cols]
        pasted = (rows.stop - rows.start) * (cols.stop - cols.start)
        lam = 1.0 - pasted / (height * width)
    return mixed, target * lam + target[partner] * (1.0 - lam)
