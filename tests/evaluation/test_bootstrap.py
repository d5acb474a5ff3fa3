"""The bootstrap over presynaptic neurons, not synapses."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    roc_auc_score,
)

from synapse_ei.evaluation.bootstrap import bootstrap_over_neurons, neuron_weighted_scores
from synapse_ei.evaluation.metrics import expected_calibration_error


def test_bootstrap_resamples_neurons_not_synapses():
    """Duplicating every synapse leaves the interval alone; more neurons narrow it."""
    rng = np.random.default_rng(2)
    n_neurons = 12
    neuron_label = np.array(["inhibitory", "excitatory"] * (n_neurons // 2))
    neuron_prob = np.clip(np.where(neuron_label == "inhibitory", 0.65, 0.35)
                          + rng.normal(0, 0.2, n_neurons), 0, 1)

    def interval(per_neuron: int, copies: int = 1) -> dict:
        neuron = np.repeat(np.arange(n_neurons * copies), per_neuron)
        base = np.tile(np.arange(n_neurons), copies)
        return bootstrap_over_neurons(
            np.repeat(neuron_label[base], per_neuron),
            np.repeat(neuron_prob[base], per_neuron),
            neuron,
            n_resamples=400,
            seed=5,
        )

    few_synapses, many_synapses = interval(2), interval(40)
    for metric in ("balanced_accuracy", "roc_auc"):
        assert few_synapses[metric] == pytest.approx(many_synapses[metric])
    more_neurons = interval(2, copies=8)
    width = lambda b: b["roc_auc"]["ci_high"] - b["roc_auc"]["ci_low"]  # noqa: E731
    assert width(more_neurons) < 0.6 * width(few_synapses)
    assert few_synapses["n_neurons"] == n_neurons


def test_vectorised_resample_scores_equal_sklearn_with_weights():
    """The fast bootstrap must score a resample exactly as sklearn would, ties included."""
    rng = np.random.default_rng(4)
    n, n_neurons = 400, 60
    neuron = rng.integers(0, n_neurons, n)
    target = (neuron % 3 == 0).astype(int)  # a neuron's synapses share its label
    prob = np.round(np.clip(0.2 * target + rng.random(n) * 0.8, 0, 1), 1)  # many ties
    draws = rng.multinomial(n_neurons, np.full(n_neurons, 1 / n_neurons), size=6).astype(float)
    scores = neuron_weighted_scores(draws, target, prob, neuron, 0.5)
    called = (prob >= 0.5).astype(int)
    labels = np.where(target == 1, "inhibitory", "excitatory")
    for row in range(len(draws)):
        weight = draws[row][neuron]
        assert scores["accuracy"][row] == pytest.approx(
            accuracy_score(target, called, sample_weight=weight)
        )
        assert scores["balanced_accuracy"][row] == pytest.approx(
            balanced_accuracy_score(target, called, sample_weight=weight)
        )
        assert scores["roc_auc"][row] == pytest.approx(
            roc_auc_score(target, prob, sample_weight=weight)
        )
        assert scores["pr_auc"][row] == pytest.approx(
            average_precision_score(target, prob, sample_weight=weight)
        )
        # Calibration: the plain function on the resample spelled out.
        repeat = np.repeat(np.arange(n), weight.astype(int))
        assert scores["expected_calibration_error"][row] == pytest.approx(
            expected_calibration_error(labels[repeat], prob[repeat])
        )
