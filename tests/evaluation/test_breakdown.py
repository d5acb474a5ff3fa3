"""Recall per cell type, synapse size and depth against hand-made predictions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from synapse_ei.evaluation.breakdown import quantile_bins, recall_breakdown, synapse_context
from synapse_ei.evaluation.intervals import wilson_interval


def test_martinotti_cells_called_excitatory_show_up():
    test = pd.DataFrame({
        "id": range(8),
        "pre_pt_root_id": [1, 1, 2, 2, 3, 4, 4, 5],
        "label": ["inhibitory"] * 4 + ["inhibitory"] + ["excitatory"] * 3,
        "pre_cell_type": ["MC", "MC", "MC", "MC", "BC", "23P", "23P", "23P"],
        "prob_inhibitory": [0.2, 0.3, 0.6, 0.3, 0.9, 0.1, 0.6, 0.2],
    })  # fmt: skip
    table = recall_breakdown(test, threshold=0.5)
    mc = table[(table["grouping"] == "cell_type") & (table["group"] == "MC")].iloc[0]
    # Neuron 1 mean 0.25 (wrong), neuron 2 mean 0.45 (wrong): 0 of 2 MC neurons right.
    assert (mc["label"], mc["n_neurons"], mc["n_synapses"]) == ("inhibitory", 2, 4)
    assert mc["neuron_recall"] == 0.0 and mc["synapse_recall"] == pytest.approx(1 / 4)
    low, high = wilson_interval(0, 2)
    assert (mc["ci_low"], mc["ci_high"]) == pytest.approx((float(low), float(high)))
    pyramidal = table[table["group"] == "23P"].iloc[0]
    # Neuron 4 mean 0.35 (right), neuron 5 0.2 (right); synapse 6 alone is wrong.
    assert pyramidal["neuron_recall"] == 1.0 and pyramidal["synapse_recall"] == pytest.approx(2 / 3)
    assert set(table["grouping"]) == {"cell_type"}  # no size or depth column given


def test_size_bins_call_each_neuron_from_its_synapses_in_the_bin():
    test = pd.DataFrame({
        "id": range(6), "pre_pt_root_id": [1, 1, 1, 2, 2, 2],
        "label": ["inhibitory"] * 3 + ["excitatory"] * 3,
        "size": [10, 20, 1000, 15, 25, 900],
        "prob_inhibitory": [0.9, 0.8, 0.1, 0.2, 0.1, 0.7],
    })  # fmt: skip
    table = recall_breakdown(test, threshold=0.5, n_bins=2)
    sizes = table[table["grouping"] == "synapse_size"]
    assert sizes["group"].tolist() == ["[10, 22.5)", "[22.5, 1000]"] * 2
    by = sizes.set_index(["label", "group"])
    # Small synapses are right for both neurons, large ones wrong for both.
    assert by.loc[("inhibitory", "[10, 22.5)"), "neuron_recall"] == 1.0
    assert by.loc[("inhibitory", "[22.5, 1000]"), "neuron_recall"] == 0.0
    assert by.loc[("excitatory", "[22.5, 1000]"), "synapse_recall"] == pytest.approx(1 / 2)
    assert by["n_synapses"].sum() == 6


def test_context_comes_from_the_split_table_in_micrometres():
    test = pd.DataFrame({"id": [5, 6], "pre_pt_root_id": [1, 2]})
    split = pd.DataFrame({"id": [6, 5, 7], "pre_cell_type": ["BC", "4P", "MC"],
                          "size": [3, 4, 5], "ctr_pt_position_y": [250, 500, 0]})
    context = synapse_context(test, split, (4, 4, 40), "split table")
    assert context["pre_cell_type"].tolist() == ["4P", "BC"]
    assert context["depth_um"].tolist() == [2.0, 1.0]
    with pytest.raises(Exception, match="not in the split table"):
        synapse_context(pd.DataFrame({"id": [99], "pre_pt_root_id": [1]}), split, (4, 4, 40),
                        "split table")


def test_quantile_bins_are_labelled_in_order():
    bins = quantile_bins(pd.Series(np.arange(8.0)), 2)
    assert list(bins.cat.categories) == ["[0, 3.5)", "[3.5, 7]"]
    assert bins.astype(str).tolist() == ["[0, 3.5)"] * 4 + ["[3.5, 7]"] * 4
