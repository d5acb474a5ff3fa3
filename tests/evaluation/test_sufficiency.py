"""How many synapses a neuron call needs: the k-synapse curve against direct computation."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd
import pytest

from synapse_ei.errors import DataError
from synapse_ei.evaluation.intervals import balanced_interval
from synapse_ei.evaluation.neurons import neuron_level
from synapse_ei.evaluation.sufficiency import expected_accuracy, synapses_needed


def hand_made():
    # Neuron 1 (inhibitory): 3 synapses, any 2 of them average >= 0.5 except {0.2, 0.4}.
    # Neuron 2 (excitatory): 2 synapses. Neuron 3 (excitatory): 1 synapse, called wrong.
    neuron = np.array([1, 1, 1, 2, 2, 3])
    labels = np.array(["inhibitory"] * 3 + ["excitatory"] * 3)
    prob = np.array([0.9, 0.2, 0.4, 0.1, 0.7, 0.8])
    return labels, prob, neuron


def exact_share(values, k, threshold=0.5, inhibitory=True):
    """The share of all k-subsets whose mean calls the neuron right."""
    calls = [(np.mean(subset) >= threshold) == inhibitory for subset in combinations(values, k)]
    return float(np.mean(calls))


def test_curve_matches_the_exact_share_of_right_k_subsets():
    labels, prob, neuron = hand_made()
    curve = synapses_needed(labels, prob, neuron, 0.5, ks=(1, 2, 3), n_draws=4000, seed=1)
    rows = curve.set_index("k")
    # k = 1: all three neurons take part.
    right_1 = {1: exact_share([0.9, 0.2, 0.4], 1), 2: exact_share([0.1, 0.7], 1, inhibitory=False),
               3: 0.0}
    expected_1 = (right_1[1] + (right_1[2] + right_1[3]) / 2) / 2
    assert rows.loc["1", "n_neurons"] == 3
    assert rows.loc["1", "balanced_accuracy"] == pytest.approx(expected_1, abs=0.02)
    # k = 2: neuron 3 has too few synapses; neuron 2's only pair averages 0.4: right.
    right_2 = exact_share([0.9, 0.2, 0.4], 2)
    assert rows.loc["2", "n_neurons"] == 2 and rows.loc["2", "n_excitatory_neurons"] == 1
    assert rows.loc["2", "balanced_accuracy"] == pytest.approx((right_2 + 1) / 2, abs=0.02)
    # k = 3: only neuron 1, one class: no balanced accuracy.
    assert rows.loc["3", "n_neurons"] == 1 and np.isnan(rows.loc["3", "balanced_accuracy"])
    # all: the plain neuron-level call.
    plain = neuron_level(labels, prob, neuron, 0.5)
    assert rows.loc["all", "balanced_accuracy"] == pytest.approx(plain["balanced_accuracy"])
    assert rows.loc["all", "accuracy"] == pytest.approx(plain["accuracy"])
    interval = balanced_interval(np.array([1.0, 1.0, 0.0]), np.array([True, False, False]))
    assert rows.loc["all", "ci_low"] == pytest.approx(interval["ci_low"])


def test_draws_are_seeded_and_take_k_distinct_synapses():
    labels, prob, neuron = hand_made()
    first = synapses_needed(labels, prob, neuron, 0.5, ks=(1, 2), n_draws=50, seed=3)
    assert first.equals(synapses_needed(labels, prob, neuron, 0.5, ks=(1, 2), n_draws=50, seed=3))
    # A neuron of two synapses drawn at k = 2 always averages both: no randomness left.
    two = synapses_needed(np.array(["excitatory"] * 2 + ["inhibitory"] * 2),
                          np.array([0.1, 0.7, 0.9, 0.3]), np.array([5, 5, 6, 6]), 0.5, ks=(2,),
                          n_draws=30, seed=0)
    assert two.set_index("k").loc["2", "balanced_accuracy"] == 1.0
    with pytest.raises(DataError, match="synapses_per_call"):
        synapses_needed(labels, prob, neuron, 0.5, ks=(0,))


def test_expected_accuracy_takes_the_largest_k_reached():
    curve = pd.DataFrame({"k": ["2", "5", "all"], "balanced_accuracy": [0.7, 0.9, 0.95]})
    assert expected_accuracy([1, 2, 4, 5, 500], curve)[1:].tolist() == [0.7, 0.7, 0.9, 0.9]
    assert np.isnan(expected_accuracy([1], curve)[0])


def test_a_draw_never_leaves_its_neuron():
    """A random key next to 1 must not sort a synapse among the next neuron's."""
    from synapse_ei.evaluation import sufficiency

    class Keys:
        def random(self, shape):
            return np.array([[0.0, 1 - 2.0**-53, 0.0, 0.0]])

    # Neuron 2's synapse comes first; 1 + (1 - 2**-53) rounds to 2.0 in float64.
    order = sufficiency._shuffled_within_neuron(np.array([2, 1, 1, 0]), 1, Keys())
    assert order[0][0] == 3 and sorted(order[0][1:3]) == [1, 2] and order[0][3] == 0
