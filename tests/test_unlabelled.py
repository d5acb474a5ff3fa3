"""Prediction on unlabelled synapses: which synapses, and how their neurons are called."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cutout_helpers import cut_all
from synapse_ei.cutout.plan import plan_shards
from synapse_ei.errors import DataError
from synapse_ei.unlabelled import (
    infer_neurons,
    NEURON_COLUMNS,
    read_cutout_shards,
    unlabelled_synapses,
)


def tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    pre = [11, 11, 22, 33, 33, 33, 0, 44]
    post = [5, 6, 5, 5, 6, 33, 5, 5]  # synapse 6 is an autapse of 33; synapse 7 has no segment
    synapses = pd.DataFrame({
        "id": np.arange(1, 9), "pre_pt_root_id": pre, "post_pt_root_id": post,
        "ctr_pt_position_x": 10, "ctr_pt_position_y": 20, "ctr_pt_position_z": 30,
    })  # fmt: skip
    cell_types = pd.DataFrame({"pt_root_id": [22, 5, 6], "cell_type": ["23P", "23P", "BC"]})
    return synapses, cell_types


def test_unlabelled_are_synapses_of_untyped_presynaptic_cells():
    synapses, cell_types = tables()
    selected, stats = unlabelled_synapses(synapses, cell_types)
    # 22 has a type; root 0 and the autapse are left out as the label stage drops them.
    assert selected["id"].tolist() == [1, 2, 4, 5, 8]
    assert stats["unlabelled_synapses"] == 5 and stats["neurons"] == 3
    assert selected["pre_pt_root_id"].dtype == np.int64


def test_cap_per_neuron_is_seeded():
    synapses, cell_types = tables()
    first, stats = unlabelled_synapses(synapses, cell_types, max_synapses_per_neuron=1, seed=3)
    again, _ = unlabelled_synapses(synapses, cell_types, max_synapses_per_neuron=1, seed=3)
    assert first.equals(again)
    assert sorted(first["pre_pt_root_id"]) == [11, 33, 44]
    assert stats["kept_synapses"] == 3 and stats["unlabelled_synapses"] == 5
    with pytest.raises(DataError, match="max_synapses_per_neuron"):
        unlabelled_synapses(synapses, cell_types, max_synapses_per_neuron=0)


def test_each_neuron_is_called_from_its_mean_probability():
    predictions = pd.DataFrame({
        "pre_pt_root_id": [7, 7, 7, 7, 9, 3],
        "prob_inhibitory": [0.9, 0.8, 0.7, 0.1, 0.35, 0.2],
    })  # fmt: skip
    neurons = infer_neurons(predictions, threshold=0.4)
    assert list(neurons.columns) == NEURON_COLUMNS
    assert neurons["pre_pt_root_id"].tolist() == [3, 7, 9]
    row = neurons.set_index("pre_pt_root_id")
    # Neuron 7: mean 0.625 >= 0.4, three of its four synapses agree.
    assert row.loc[7, "predicted_label"] == "inhibitory"
    assert row.loc[7, "mean_prob_inhibitory"] == pytest.approx(0.625)
    assert row.loc[7, "confidence"] == pytest.approx(0.75)
    assert row.loc[7, "n_synapses"] == 4
    # Neuron 9: 0.35 < 0.4 is excitatory, its only synapse agrees.
    assert row.loc[9, "predicted_label"] == "excitatory" and row.loc[9, "confidence"] == 1.0
    assert (neurons["threshold"] == 0.4).all()


def test_cut_unlabelled_shards_are_read_as_the_gather_reads_them(raw_volume, tmp_path):
    path, _, _, synapses = raw_volume
    # Unlabelled synapses have neither split nor label: the shards are read all the same.
    plan = plan_shards(synapses.drop(columns=["split", "label"]), 2)
    dirs = cut_all(plan, path, tmp_path / "cutouts")
    manifest, skipped = read_cutout_shards(dirs)
    assert manifest["id"].tolist() == sorted(synapses["id"]) and skipped == {}
    # A stack gone from a finished shard is refused here too, naming the file, not read as zeros.
    (dirs[1] / "2d.tif").unlink()
    with pytest.raises(DataError, match=r"2d\.tif"):
        read_cutout_shards(dirs)
