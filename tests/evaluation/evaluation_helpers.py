"""Predictions of neurons whose synapses share a label, for the evaluation tests."""

from __future__ import annotations

import numpy as np
import pandas as pd


def make_predictions(n_neurons: int = 30, per_neuron: int = 10, seed: int = 0) -> pd.DataFrame:
    """Neuron-level predictions: every synapse of a neuron shares its label and a noisy score."""
    rng = np.random.default_rng(seed)
    rows = []
    for neuron in range(n_neurons):
        label = "inhibitory" if neuron % 3 == 0 else "excitatory"
        split = "val" if neuron % 2 else "test"
        centre = 0.7 if label == "inhibitory" else 0.3
        for k in range(per_neuron):
            prob = float(np.clip(centre + rng.normal(0, 0.2), 0, 1))
            rows.append((neuron * 1000 + k, 864691135000000000 + neuron, split, label, prob))
    return pd.DataFrame(rows, columns=["id", "pre_pt_root_id", "split", "label", "prob_inhibitory"])
