"""Each training loss against a direct computation, and how the config picks and weights them."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from synapse_ei.errors import DataError
from synapse_ei.learn.losses import (
    BalancedBCE,
    build_loss,
    effective_number_weights,
    FocalLoss,
    one_hot,
    WeightedCrossEntropy,
)

LOGITS = torch.tensor([[0.3, -1.2], [2.0, 0.5], [-0.4, 1.1], [0.0, 0.0]])
LABELS = torch.tensor([1, 0, 1, 0])


def test_weighted_cross_entropy_matches_torch_for_hard_labels():
    weight = torch.tensor([0.6, 2.5])
    loss = WeightedCrossEntropy(weight)(LOGITS, one_hot(LABELS))
    torch.testing.assert_close(loss, F.cross_entropy(LOGITS, LABELS, weight=weight))
    torch.testing.assert_close(WeightedCrossEntropy()(LOGITS, one_hot(LABELS)),
                               F.cross_entropy(LOGITS, LABELS))


def test_balanced_bce_is_weighted_bce_on_the_inhibitory_log_odds():
    weight = torch.tensor([0.5, 1.5])
    loss = BalancedBCE(weight)(LOGITS, one_hot(LABELS))
    p = torch.sigmoid(LOGITS[:, 1] - LOGITS[:, 0])  # = softmax probability of inhibitory
    t = LABELS.float()
    direct = -(1.5 * t * torch.log(p) + 0.5 * (1 - t) * torch.log(1 - p)).mean()
    torch.testing.assert_close(loss, direct)
    # Unweighted it is torch's BCE with logits on z1 - z0.
    torch.testing.assert_close(
        BalancedBCE()(LOGITS, one_hot(LABELS)),
        F.binary_cross_entropy_with_logits(LOGITS[:, 1] - LOGITS[:, 0], t),
    )


def test_effective_number_weights_by_hand():
    # counts (3, 1), beta 0.5: (1 - b) / (1 - b^n) = (0.5 / 0.875, 0.5 / 0.5), scaled to sum 2.
    raw = torch.tensor([0.5 / 0.875, 1.0])
    torch.testing.assert_close(effective_number_weights([3, 1], 0.5), raw * 2 / raw.sum())
    # beta 0 means no rebalancing; beta near 1 approaches inverse frequency (1:5 here).
    torch.testing.assert_close(effective_number_weights([500, 100], 0.0), torch.ones(2))
    near = effective_number_weights([500, 100], 0.999999)
    assert near[1] / near[0] == pytest.approx(5.0, rel=1e-3)


def test_focal_with_gamma_zero_is_cross_entropy():
    torch.testing.assert_close(FocalLoss(gamma=0.0)(LOGITS, one_hot(LABELS)),
                               F.cross_entropy(LOGITS, LABELS))
    # alpha weights the inhibitory class, 1 - alpha the excitatory one (mean over samples).
    per_sample = F.cross_entropy(LOGITS, LABELS, reduction="none")
    alpha_t = torch.where(LABELS == 1, 0.8, 0.2)
    torch.testing.assert_close(FocalLoss(gamma=0.0, alpha=0.8)(LOGITS, one_hot(LABELS)),
                               (alpha_t * per_sample).mean())


def test_focal_by_hand():
    # Equal logits: p_t = 0.5, so each term is alpha_t * 0.5^2 * ln 2.
    logits = torch.zeros(2, 2)
    loss = FocalLoss(gamma=2.0, alpha=0.75)(logits, one_hot(torch.tensor([1, 0])))
    expected = (0.75 + 0.25) / 2 * 0.25 * math.log(2)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # A confident right answer costs far less than under cross-entropy.
    sure = torch.tensor([[0.0, 4.0]])
    focal = FocalLoss(gamma=2.0)(sure, one_hot(torch.tensor([1])))
    assert focal < 0.01 * F.cross_entropy(sure, torch.tensor([1]))


def test_soft_targets_interpolate_the_losses():
    target = torch.tensor([[0.3, 0.7]])
    logits = torch.tensor([[0.2, -0.5]])
    for loss in (FocalLoss(gamma=2.0), BalancedBCE(), WeightedCrossEntropy()):
        mixed = loss(logits, target)
        ends = [loss(logits, one_hot(torch.tensor([c]))) for c in (0, 1)]
        torch.testing.assert_close(mixed, 0.3 * ends[0] + 0.7 * ends[1])


def test_build_loss_weights_classes_unless_the_sampler_balances_them():
    counts = [85, 15]
    ce = build_loss("cross_entropy", counts)
    torch.testing.assert_close(ce.weight, torch.tensor([100 / 170, 100 / 30]))
    assert build_loss("cross_entropy", counts, balanced_sampler=True).weight is None
    assert build_loss("balanced_bce", counts, balanced_sampler=True).weight is None
    assert build_loss("balanced_bce", counts).weight[1] > 1.0
    # Focal alpha defaults to the excitatory fraction: the minority class gets 0.85.
    torch.testing.assert_close(build_loss("focal", counts).weight, torch.tensor([0.15, 0.85]))
    assert build_loss("focal", counts, balanced_sampler=True).weight is None
    with pytest.raises(DataError, match="focal_alpha"):
        build_loss("focal", counts, balanced_sampler=True, focal_alpha=0.75)
    with pytest.raises(DataError, match="inhibitory"):
        build_loss("cross_entropy", [10, 0])
    with pytest.raises(DataError, match="hinge"):
        build_loss("hinge", counts)
