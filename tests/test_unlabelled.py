"""Prediction on unlabelled synapses: which synapses, and how their neurons are called."""

from __future__ import annotations

import json

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


def test_each_call_gets_the_accuracy_expected_at_its_synapse_count():
    predictions = pd.DataFrame({
        "pre_pt_root_id": [7] * 4 + [9] + [3] * 60,
        "prob_inhibitory": [0.9, 0.8, 0.7, 0.1, 0.35] + [0.2] * 60,
    })  # fmt: skip
    curve = pd.DataFrame({"k": ["1", "3", "50", "all"],
                          "balanced_accuracy": [0.6, 0.75, 0.95, 0.9]})
    neurons = infer_neurons(predictions, 0.4, curve).set_index("pre_pt_root_id")
    # 4 synapses reach k = 3; 1 reaches k = 1; 60 reach k = 50 (not the "all" row).
    assert neurons["expected_accuracy"].to_dict() == {3: 0.95, 7: 0.75, 9: 0.6}
    assert infer_neurons(predictions, 0.4)["expected_accuracy"].isna().all()


def test_cave_table_holds_one_point_per_axon_in_cave_voxels(tmp_path):
    from synapse_ei.unlabelled import cave_calls, CAVE_COLUMNS, write_cave_calls

    predictions = pd.DataFrame({"pre_pt_root_id": [7, 7, 9], "prob_inhibitory": [0.9, 0.7, 0.1]})
    neurons = infer_neurons(predictions, 0.5)
    manifest = pd.DataFrame({
        "id": [12, 11, 30], "pre_pt_root_id": [7, 7, 9],
        # Table positions in 8 x 8 x 40 nm voxels: CAVE's 4 x 4 x 40 doubles x and y.
        "pre_pt_position_x": [100, 50, 7], "pre_pt_position_y": [200, 60, 8],
        "pre_pt_position_z": [3, 4, 5],
    })  # fmt: skip
    calls = cave_calls(neurons, manifest, "cnn2d", (8, 8, 40))
    assert list(calls.columns) == CAVE_COLUMNS
    assert calls["pt_root_id"].tolist() == [7, 9]
    assert calls["pt_position"].tolist() == [[100, 120, 4], [14, 16, 5]]  # synapse 11 for 7
    assert calls["cell_type"].tolist() == ["inhibitory", "excitatory"]
    assert calls["prob_inhibitory"].tolist() == pytest.approx([0.8, 0.1])
    assert calls["n_synapses"].tolist() == [2, 1]
    write_cave_calls(calls, tmp_path / "c.parquet", tmp_path / "c.csv", tmp_path / "c.json",
                     {"source": "cave", "materialization_version": 1300}, "cnn2d", 0.5)
    meta = json.loads((tmp_path / "c.json").read_text())
    assert meta["materialization_version"] == 1300 and meta["schema"] == "cell_type_local"
    assert pd.read_csv(tmp_path / "c.csv")["pt_position"].tolist() == ["[100, 120, 4]",
                                                                       "[14, 16, 5]"]
    assert pd.read_parquet(tmp_path / "c.parquet")["pt_position"].map(list).tolist() == [
        [100, 120, 4], [14, 16, 5]]
    with pytest.raises(DataError, match="point per axon"):
        cave_calls(neurons, manifest[["id", "pre_pt_root_id"]], "cnn2d", (4, 4, 40))


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
