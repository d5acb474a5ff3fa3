"""Calling a neuron from its synapses' mean probability."""

from __future__ import annotations

import numpy as np
import pytest

from synapse_ei.errors import DataError
from synapse_ei.evaluation.neurons import neuron_level


def test_neuron_level_calls_each_neuron_from_its_mean_probability():
    neuron = np.array([1, 1, 1, 2, 2, 3, 3, 3, 3])
    labels = ["inhibitory"] * 3 + ["excitatory"] * 2 + ["excitatory"] * 4
    # Neuron 1: mean 0.6 (right at 0.5), neuron 2: mean 0.45 (right), neuron 3: mean 0.55 (wrong).
    prob = np.array([0.9, 0.6, 0.3, 0.4, 0.5, 0.2, 0.8, 0.6, 0.6])
    result = neuron_level(labels, prob, neuron, threshold=0.5)
    assert result["n_neurons"] == 3
    assert result["accuracy"] == pytest.approx(2 / 3)
    assert result["balanced_accuracy"] == pytest.approx((1 + 1 / 2) / 2)
    assert result["per_class"] == {"excitatory": {"neurons": 2, "correct": 1},
                                   "inhibitory": {"neurons": 1, "correct": 1}}
    assert result["synapses_per_neuron"] == {"min": 2, "median": 3.0, "max": 4}
    assert neuron_level(labels, prob, neuron, threshold=0.58)["accuracy"] == pytest.approx(1.0)


def test_neuron_with_two_labels_is_named():
    with pytest.raises(DataError, match="neuron 7"):
        neuron_level(["excitatory", "inhibitory"], np.array([0.2, 0.8]), np.array([7, 7]))
