"""Synapse-level metrics agree with scikit-learn; calibration."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    f1_score,
    roc_auc_score,
)

from synapse_ei.errors import DataError
from synapse_ei.evaluation.metrics import (
    compute_metrics,
    expected_calibration_error,
    reliability_table,
)


def test_hand_checked_tiny_case():
    labels = ["excitatory", "excitatory", "excitatory", "inhibitory", "inhibitory"]
    prob = np.array([0.1, 0.6, 0.2, 0.9, 0.4])
    metrics = compute_metrics(labels, prob)
    # Called inhibitory: rows 1 and 3. TN=2, FP=1, FN=1, TP=1.
    assert metrics["confusion_matrix"] == [[2, 1], [1, 1]]
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert metrics["per_class"]["inhibitory"]["precision"] == pytest.approx(1 / 2)
    assert metrics["per_class"]["inhibitory"]["recall"] == pytest.approx(1 / 2)
    assert metrics["per_class"]["excitatory"]["recall"] == pytest.approx(2 / 3)
    # Pairs (inhibitory, excitatory) ranked correctly: 0.9 beats all 3, 0.4 beats 0.1 and 0.2.
    assert metrics["roc_auc"] == pytest.approx(5 / 6)
    assert metrics["confusion_matrix_order"] == ["excitatory", "inhibitory"]


def test_agrees_with_sklearn_on_random_inputs():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 2, 300)
    prob = np.clip(0.3 * target + rng.random(300) * 0.7, 0, 1)
    labels = np.where(target == 1, "inhibitory", "excitatory")
    metrics = compute_metrics(labels, prob, threshold=0.4)
    predicted = (prob >= 0.4).astype(int)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(target, predicted))
    assert metrics["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(target, predicted))
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(target, prob))
    assert metrics["pr_auc"] == pytest.approx(average_precision_score(target, prob))
    assert metrics["per_class"]["inhibitory"]["f1"] == pytest.approx(f1_score(target, predicted))
    assert metrics["per_class"]["excitatory"]["f1"] == pytest.approx(
        f1_score(target, predicted, pos_label=0)
    )
    assert np.sum(metrics["confusion_matrix"]) == 300


def test_single_class_is_refused():
    with pytest.raises(DataError, match="both classes"):
        compute_metrics(["excitatory"] * 3, np.array([0.1, 0.2, 0.3]))


def test_expected_calibration_error_hand_computed():
    labels = ["excitatory", "inhibitory", "excitatory", "inhibitory", "inhibitory"]
    prob = np.array([0.05, 0.15, 0.85, 0.95, 1.0])
    # Bins of 0.5: [0, 0.5) holds 0.05, 0.15 (mean 0.1, 1 of 2 inhibitory: gap 0.4);
    # [0.5, 1] holds 0.85, 0.95, 1.0 (mean 0.9333, 2 of 3 inhibitory: gap 0.2667).
    expected = (2 * 0.4 + 3 * abs(2 / 3 - 2.8 / 3)) / 5
    assert expected_calibration_error(labels, prob, n_bins=2) == pytest.approx(expected)
    assert expected_calibration_error(["excitatory", "inhibitory"], np.array([0.0, 1.0])) == 0


def test_reliability_bins_agree_with_sklearn():
    rng = np.random.default_rng(3)
    target = rng.integers(0, 2, 200)
    prob = np.clip(0.5 * target + 0.5 * rng.random(200), 0, 1)
    labels = np.where(target == 1, "inhibitory", "excitatory")
    table = reliability_table(labels, prob, n_bins=10)
    filled = table[table["n_synapses"] > 0]
    fraction, mean_prob = calibration_curve(target, prob, n_bins=10, strategy="uniform")
    np.testing.assert_allclose(filled["fraction_inhibitory"], fraction)
    np.testing.assert_allclose(filled["mean_prob_inhibitory"], mean_prob)
    assert table["n_synapses"].sum() == 200
