"""Training losses for the two-class (excitatory = 0, inhibitory = 1) image models.

Every loss takes the model's logits (N, 2) and *soft* targets (N, 2): a row of class probabilities,
one-hot for a plain batch and mixed for MixUp/CutMix (:mod:`synapse_ei.learn.augment`). With one-hot
targets each reduces to its textbook form.

- ``cross_entropy``: class-weighted cross-entropy, averaged over the batch's total weight
  (PyTorch's ``F.cross_entropy(weight=...)`` mean for hard labels).
- ``balanced_bce``: binary cross-entropy on the inhibitory log-odds ``z_1 - z_0`` (so
  ``sigmoid`` of it is the softmax probability inference reports), each class weighted by the
  class-balanced weight of Cui et al. 2019 from its effective number of samples
  ``(1 - beta^n_c) / (1 - beta)``; milder than inverse frequency, which it approaches as
  ``beta -> 1``.
- ``focal``: Lin et al. 2017, ``-alpha_t (1 - p_t)^gamma log p_t``; ``alpha`` weights the
  inhibitory (minority) class and ``1 - alpha`` the excitatory one.

Class weights and ``alpha`` are dropped with the balanced sampler: it already shows the classes
equally often, and weighting on top of it would over-correct (see :func:`build_loss`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from synapse_ei.errors import DataError
from synapse_ei.tables import LABELS

LOSSES = ("cross_entropy", "balanced_bce", "focal")


def one_hot(labels: torch.Tensor, num_classes: int = 2) -> torch.Tensor:
    """Integer labels (N,) as float one-hot targets (N, num_classes)."""
    return F.one_hot(labels, num_classes).float()


def inverse_frequency_weights(counts: Sequence[int]) -> torch.Tensor:
    """``n / (num_classes * n_c)`` per class: each class contributes equally to a weighted mean."""
    counts = np.asarray(counts, dtype=np.float64)
    _require_both_classes(counts)
    return torch.tensor(counts.sum() / (len(counts) * counts), dtype=torch.float32)


def effective_number_weights(counts: Sequence[int], beta: float) -> torch.Tensor:
    """Cui et al. 2019 class-balanced weights ``(1 - beta) / (1 - beta^n_c)``, summing to C."""
    counts = np.asarray(counts, dtype=np.float64)
    _require_both_classes(counts)
    if not 0.0 <= beta < 1.0:
        raise DataError(f"models: setting 'cb_beta' is {beta!r}; it must be in [0, 1).")
    weights = (1.0 - beta) / (1.0 - np.power(beta, counts))
    return torch.tensor(weights * len(counts) / weights.sum(), dtype=torch.float32)


def _require_both_classes(counts: np.ndarray) -> None:
    if (counts == 0).any():
        missing = [LABELS[i] for i in np.flatnonzero(counts == 0)]
        raise DataError(
            f"training split has no {missing} cutouts: a classifier needs both classes. Check the "
            "split and cutout stages (more data or another split seed)."
        )


class WeightedCrossEntropy(nn.Module):
    """Cross-entropy with optional class weights, normalised by the batch's total weight."""

    def __init__(self, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=1)
        weighted = target if self.weight is None else target * self.weight
        return -(weighted * log_p).sum() / weighted.sum()


class BalancedBCE(nn.Module):
    """Per-class weighted BCE on the inhibitory log-odds, averaged over the batch."""

    def __init__(self, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        log_odds = logits[:, 1] - logits[:, 0]
        # log sigmoid(z) and log(1 - sigmoid(z)) = log sigmoid(-z), both numerically stable.
        log_p = torch.stack([F.logsigmoid(-log_odds), F.logsigmoid(log_odds)], dim=1)
        weighted = target if self.weight is None else target * self.weight
        return -(weighted * log_p).sum(dim=1).mean()


class FocalLoss(nn.Module):
    """Focal loss ``-alpha_t (1 - p_t)^gamma log p_t`` averaged over the batch.

    ``alpha`` is the inhibitory class's weight (the excitatory one gets ``1 - alpha``); None
    weights both classes 1, so ``gamma = 0`` and ``alpha = None`` is plain cross-entropy.
    """

    def __init__(self, gamma: float = 2.0, alpha: float | None = None) -> None:
        super().__init__()
        if gamma < 0:
            raise DataError(f"models: setting 'focal_gamma' is {gamma!r}; it must be >= 0.")
        self.gamma = float(gamma)
        weight = None if alpha is None else torch.tensor([1.0 - alpha, alpha])
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=1)
        focus = (1.0 - log_p.exp()).pow(self.gamma)
        weighted = target if self.weight is None else target * self.weight
        return -(weighted * focus * log_p).sum(dim=1).mean()


def build_loss(
    name: str,
    class_counts: Sequence[int],
    balanced_sampler: bool = False,
    focal_gamma: float = 2.0,
    focal_alpha: float | None = None,
    cb_beta: float = 0.999,
) -> nn.Module:
    """The training loss ``name`` for a training split with ``class_counts`` per class.

    With ``balanced_sampler`` the loss is unweighted (no class weights, no focal ``alpha``): the
    sampler balances the classes instead. Otherwise focal ``alpha`` defaults to the excitatory
    fraction of the training split, so the rarer inhibitory class gets the larger weight.
    """
    if name == "cross_entropy":
        return WeightedCrossEntropy(None if balanced_sampler
                                    else inverse_frequency_weights(class_counts))
    if name == "balanced_bce":
        return BalancedBCE(None if balanced_sampler
                           else effective_number_weights(class_counts, cb_beta))
    if name == "focal":
        if balanced_sampler:
            if focal_alpha is not None:
                raise DataError(
                    "models: 'focal_alpha' and 'sampler: balanced' both balance the classes; "
                    "set one of them (leave focal_alpha out with the balanced sampler)."
                )
            return FocalLoss(focal_gamma, None)
        if focal_alpha is None:
            counts = np.asarray(class_counts, dtype=np.float64)
            _require_both_classes(counts)
            focal_alpha = float(counts[0] / counts.sum())
        if not 0.0 < focal_alpha < 1.0:
            raise DataError(f"models: setting 'focal_alpha' is {focal_alpha!r}; it must be "
                            "strictly between 0 and 1.")
        return FocalLoss(focal_gamma, focal_alpha)
    raise DataError(f"models: loss {name!r} is unknown; use one of {list(LOSSES)}.")
