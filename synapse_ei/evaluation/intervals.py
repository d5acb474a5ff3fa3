"""Intervals over presynaptic neurons that stay honest with few neurons.

A bootstrap interval of a proportion collapses to [1, 1] when every resampled neuron is right,
however few neurons there are. Neuron-level proportions (accuracy, recall, balanced accuracy)
therefore carry the Wilson score interval, which for 5 of 5 correct neurons still reaches down
to 0.57. Balanced accuracy, the mean of the two class recalls, takes the mean of the two
classes' Wilson bounds."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import norm

#: Named in the metrics and the reports beside every neuron-level interval.
NEURON_INTERVAL = "95% Wilson score interval over neurons"
#: Named beside neuron-level balanced accuracy.
BALANCED_INTERVAL = "mean of the two classes' 95% Wilson bounds over neurons"
LEVEL = 0.95


def wilson_interval(successes: Any, n: Any, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """The Wilson score interval of ``successes`` out of ``n`` (elementwise; NaN where n is 0).

    ``successes`` may be fractional (an expected count of correct neurons), which the formula
    accepts as it is.
    """
    successes, n = np.asarray(successes, dtype=float), np.asarray(n, dtype=float)
    z = norm.ppf(0.5 + level / 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = successes / n
        centre = (share + z**2 / (2 * n)) / (1 + z**2 / n)
        half = z * np.sqrt(share * (1 - share) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    low, high = np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)
    empty = n <= 0
    return np.where(empty, np.nan, low), np.where(empty, np.nan, high)


def _interval(low: float, high: float) -> dict[str, float | None]:
    return {"ci_low": None if np.isnan(low) else float(low),
            "ci_high": None if np.isnan(high) else float(high)}


def proportion_interval(successes: float, n: int) -> dict[str, float | None]:
    """:func:`wilson_interval` as the ``{"ci_low", "ci_high"}`` of a ``ci95`` entry."""
    low, high = wilson_interval(successes, n)
    return _interval(float(low), float(high))


def balanced_interval(correct: Any, inhibitory: Any) -> dict[str, float | None]:
    """The interval of a neuron-level balanced accuracy: ``correct`` is each neuron's (possibly
    expected) correctness in [0, 1], ``inhibitory`` its true class. None bounds when a class
    has no neuron."""
    correct = np.asarray(correct, dtype=float)
    inhibitory = np.asarray(inhibitory, dtype=bool)
    bounds = [wilson_interval(correct[mask].sum(), mask.sum()) for mask in (~inhibitory,
                                                                               inhibitory)]
    low = (bounds[0][0] + bounds[1][0]) / 2
    high = (bounds[0][1] + bounds[1][1]) / 2
    return _interval(float(low), float(high))
