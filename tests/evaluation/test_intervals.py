"""Neuron-level intervals that stay honest with few neurons."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from synapse_ei.evaluation.intervals import balanced_interval, proportion_interval, wilson_interval


@pytest.mark.parametrize(("successes", "n"), [(0, 5), (3, 7), (5, 5), (48, 50), (1, 1)])
def test_wilson_interval_equals_scipys(successes, n):
    low, high = wilson_interval(successes, n)
    expected = binomtest(successes, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert (float(low), float(high)) == pytest.approx((expected.low, expected.high))


def test_all_right_does_not_collapse_to_one():
    interval = proportion_interval(5, 5)
    assert interval["ci_high"] == pytest.approx(1.0)
    assert interval["ci_low"] == pytest.approx(0.5655, abs=1e-4)  # 5 of 5: still uncertain
    assert proportion_interval(0, 0) == {"ci_low": None, "ci_high": None}


def test_balanced_interval_averages_the_class_bounds():
    correct = np.array([1, 1, 1, 0, 1, 1])
    inhibitory = np.array([False, False, False, False, True, True])
    excitatory = wilson_interval(3, 4)
    inhib = wilson_interval(2, 2)
    interval = balanced_interval(correct, inhibitory)
    assert interval["ci_low"] == pytest.approx((excitatory[0] + inhib[0]) / 2)
    assert interval["ci_high"] == pytest.approx((excitatory[1] + inhib[1]) / 2)
    assert balanced_interval(correct, np.zeros(6, dtype=bool))["ci_low"] is None
