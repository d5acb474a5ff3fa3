"""How many synapses a reliable neuron call needs.

Most synapses in a volume come from axons whose soma lies outside it; each such axon is called
from however many synapses it has. To say how far such a call can be trusted, every test neuron
is subsampled to k of its synapses (many seeded draws without replacement) and called from their
mean probability, as :func:`synapse_ei.evaluation.neurons.calls_inhibitory` calls it. A neuron
takes part at k only when it has at least k test synapses, so each point of the curve is made
of real k-synapse calls; ``all`` calls every neuron from all its synapses.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from synapse_ei.errors import DataError
from synapse_ei.evaluation.intervals import balanced_interval
from synapse_ei.evaluation.metrics import label_targets
from synapse_ei.evaluation.neurons import calls_inhibitory

#: Defaults of the config keys evaluate.synapses_per_call and evaluate.synapse_draws.
DEFAULT_KS = (1, 2, 3, 5, 10, 20, 50)
DEFAULT_DRAWS = 200
ALL = "all"
CURVE_COLUMNS = ["k", "n_neurons", "n_inhibitory_neurons", "n_excitatory_neurons", "accuracy",
                 "balanced_accuracy", "ci_low", "ci_high"]
# Resamples x synapses entries handled at once (about 16 MB of float64).
_CHUNK_ENTRIES = 2_000_000


def _shuffled_within_neuron(neuron_of_synapse: np.ndarray, n_draws: int,
                            rng: np.random.Generator) -> np.ndarray:
    """For each draw (rows) the synapses ordered by neuron, in a random order within each
    neuron: the first k of a neuron's run are a draw of k without replacement."""
    # Half of [0, 1): neuron + 0.99999... can round up to the next neuron's index.
    keys = neuron_of_synapse[None, :] + 0.5 * rng.random((n_draws, len(neuron_of_synapse)))
    return np.argsort(keys, axis=1, kind="stable")


def _expected_correct(prob, neuron_of_synapse, inhibitory, threshold, ks, n_draws, seed):
    """Per k: the share of the draws in which each neuron's k-synapse call is right (neurons
    with fewer than k synapses get a meaningless value; the caller leaves them out)."""
    counts = np.bincount(neuron_of_synapse, minlength=len(inhibitory))
    first = np.cumsum(counts) - counts
    rng = np.random.default_rng(seed)
    correct = {k: np.zeros(len(inhibitory)) for k in ks}
    chunk = max(1, min(n_draws, _CHUNK_ENTRIES // max(len(prob), 1)))
    for start in range(0, n_draws, chunk):
        size = min(chunk, n_draws - start)
        order = _shuffled_within_neuron(neuron_of_synapse, size, rng)
        # running[:, j]: the sum of the first j shuffled probabilities, so a neuron's first k
        # sum to running[first + k] - running[first], for every k at once.
        running = np.zeros((size, len(prob) + 1))
        np.cumsum(prob[order], axis=1, out=running[:, 1:])
        for k in ks:
            total = running[:, first + np.minimum(k, counts)] - running[:, first]
            correct[k] += (calls_inhibitory(total / k, threshold) == inhibitory[None, :]).sum(0)
    return {k: values / n_draws for k, values in correct.items()}


def _curve_row(k: int | str, correct: np.ndarray, inhibitory: np.ndarray) -> dict:
    n_inhibitory, n_excitatory = int(inhibitory.sum()), int((~inhibitory).sum())
    balanced, interval = np.nan, {"ci_low": np.nan, "ci_high": np.nan}
    if n_inhibitory and n_excitatory:
        balanced = (correct[inhibitory].mean() + correct[~inhibitory].mean()) / 2
        interval = balanced_interval(correct, inhibitory)
    return {
        "k": str(k),
        "n_neurons": int(len(correct)),
        "n_inhibitory_neurons": n_inhibitory,
        "n_excitatory_neurons": n_excitatory,
        "accuracy": float(correct.mean()) if len(correct) else np.nan,
        "balanced_accuracy": float(balanced),
        "ci_low": np.nan if interval["ci_low"] is None else float(interval["ci_low"]),
        "ci_high": np.nan if interval["ci_high"] is None else float(interval["ci_high"]),
    }


def synapses_needed(
    labels: Sequence[str] | np.ndarray,
    prob_inhibitory: np.ndarray,
    neuron_ids: np.ndarray,
    threshold: float,
    ks: Sequence[int] = DEFAULT_KS,
    n_draws: int = DEFAULT_DRAWS,
    seed: int = 0,
) -> pd.DataFrame:
    """Neuron-level accuracy and balanced accuracy against k, the synapses a call is made from.

    One row per k of ``ks`` and a last row ``all`` (:data:`CURVE_COLUMNS`). At each k every
    neuron with at least k synapses is called ``n_draws`` times from k of its synapses drawn
    without replacement; its expected correctness (share of right calls) enters the class
    recalls. ``ci_low``/``ci_high``: the interval of
    :func:`synapse_ei.evaluation.intervals.balanced_interval` over those neurons.
    """
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1 or n_draws < 1:
        raise DataError(
            f"evaluate.synapses_per_call {ks} must be integers >= 1 and evaluate.synapse_draws "
            f"({n_draws}) at least 1."
        )
    target = label_targets(labels)
    prob = np.asarray(prob_inhibitory, dtype=float)
    _, neuron_of_synapse = np.unique(np.asarray(neuron_ids), return_inverse=True)
    n_synapses = np.bincount(neuron_of_synapse)
    inhibitory = np.bincount(neuron_of_synapse, target) > 0
    correct = _expected_correct(prob, neuron_of_synapse, inhibitory, threshold, ks, n_draws,
                                seed)
    rows = [
        _curve_row(k, correct[k][n_synapses >= k], inhibitory[n_synapses >= k]) for k in ks
    ]
    mean = np.bincount(neuron_of_synapse, prob) / n_synapses
    rows.append(_curve_row(ALL, (calls_inhibitory(mean, threshold) == inhibitory).astype(float),
                           inhibitory))
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def expected_accuracy(n_synapses: Sequence[int] | np.ndarray, curve: pd.DataFrame) -> np.ndarray:
    """The balanced accuracy that test neurons reached when called from as many synapses as
    each of ``n_synapses``: that of the largest k of ``curve`` at most the count (a neuron with
    more synapses than the largest k gets that k's value, a lower bound). NaN where no k fits or
    the curve has no value there."""
    finite = curve[curve["k"] != ALL]
    ks = finite["k"].astype(int).to_numpy()
    values = finite["balanced_accuracy"].to_numpy(dtype=float)
    order = np.argsort(ks)
    ks, values = ks[order], values[order]
    index = np.searchsorted(ks, np.asarray(n_synapses, dtype=int), side="right") - 1
    return np.where(index >= 0, values[np.clip(index, 0, None)], np.nan)

