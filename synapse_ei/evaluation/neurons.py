"""Calling a presynaptic neuron from its synapses' mean inhibitory probability."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import balanced_accuracy_score

from synapse_ei.errors import DataError
from synapse_ei.evaluation.intervals import (
    BALANCED_INTERVAL,
    balanced_interval,
    NEURON_INTERVAL,
    proportion_interval,
)
from synapse_ei.evaluation.metrics import DEFAULT_THRESHOLD, label_targets
from synapse_ei.tables import LABELS


#: How a neuron is called from its synapses (the evaluation and the unlabelled stage alike).
CALL_RULE = "mean probability of inhibitory over the neuron's synapses >= threshold"


def calls_inhibitory(mean_prob_inhibitory: Any, threshold: float) -> np.ndarray:
    """The call of each neuron (or synapse) from its (mean) probability of inhibitory: True,
    inhibitory, where it is at least ``threshold``."""
    return np.asarray(mean_prob_inhibitory) >= threshold


def neuron_table(
    labels: Sequence[str] | np.ndarray | None,
    prob_inhibitory: np.ndarray,
    neuron_ids: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
) -> pd.DataFrame:
    """One row per presynaptic neuron, sorted by root id: its synapse count, mean probability of
    inhibitory, and the fraction of its synapses whose own call at ``threshold`` is
    inhibitory; with ``labels`` also its label. Raises :class:`DataError` when a neuron's
    synapses carry both labels. The one per-neuron grouping of the evaluation and the
    unlabelled stage."""
    prob = np.asarray(prob_inhibitory, dtype=float)
    frame = pd.DataFrame(
        {
            "pre_pt_root_id": np.asarray(neuron_ids),
            "prob_inhibitory": prob,
            "called": calls_inhibitory(prob, threshold).astype(float),
        }
    )
    grouped = frame.groupby("pre_pt_root_id", sort=True)
    table = pd.DataFrame(
        {
            "n_synapses": grouped.size(),
            "mean_prob_inhibitory": grouped["prob_inhibitory"].mean(),
            "fraction_called_inhibitory": grouped["called"].mean(),
        }
    )
    if labels is not None:
        by_label = pd.Series(np.asarray(labels, dtype=object), index=frame["pre_pt_root_id"])
        mixed = by_label.groupby(level=0).nunique()
        if (mixed > 1).any():
            raise DataError(
                f"presynaptic neuron {int(mixed[mixed > 1].index[0])} has synapses labelled "
                "both excitatory and inhibitory; a neuron has one type. Rerun the label stage."
            )
        table.insert(0, "label", by_label.groupby(level=0).first())
    return table.reset_index()


def neuron_level(
    labels: Sequence[str] | np.ndarray,
    prob_inhibitory: np.ndarray,
    neuron_ids: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
) -> dict[str, Any]:
    """Each presynaptic neuron called inhibitory when its synapses' mean probability of
    inhibitory is at least ``threshold``: accuracy and balanced accuracy with their intervals
    (:mod:`synapse_ei.evaluation.intervals`), and counts per class."""
    neurons = neuron_table(labels, prob_inhibitory, neuron_ids, threshold)
    target = label_targets(neurons["label"])
    called = calls_inhibitory(neurons["mean_prob_inhibitory"], threshold).astype(int)
    correct = called == target
    per_class = {
        name: {"neurons": int((target == index).sum()),
               "correct": int(correct[target == index].sum())}
        for index, name in enumerate(LABELS)
    }
    both = all(counts["neurons"] > 0 for counts in per_class.values())
    return {
        "threshold": float(threshold),
        "rule": CALL_RULE,
        "n_neurons": int(len(neurons)),
        "accuracy": float(correct.mean()),
        "balanced_accuracy": float(balanced_accuracy_score(target, called)) if both else None,
        "ci95": {
            "accuracy": proportion_interval(float(correct.sum()), len(correct)),
            "balanced_accuracy": balanced_interval(correct, target == 1),
        },
        "interval": {"accuracy": NEURON_INTERVAL, "balanced_accuracy": BALANCED_INTERVAL},
        "per_class": per_class,
        "synapses_per_neuron": {
            "min": int(neurons["n_synapses"].min()),
            "median": float(neurons["n_synapses"].median()),
            "max": int(neurons["n_synapses"].max()),
        },
    }
