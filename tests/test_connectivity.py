"""The connectivity-only baseline: no presynaptic identity in its features, fit on train only."""

from __future__ import annotations

import joblib
import numpy as np
import pandas as pd
import pytest

from synapse_ei.connectivity import connectivity_features, predict_connectivity, train_connectivity
from synapse_ei.errors import DataError

COLUMN = "classification_system"
CLASSES = {"excitatory_neuron": "excitatory", "inhibitory_neuron": "inhibitory"}
FEATURES_WITH_SIZE = [
    "log1p_size",
    "log1p_connection_synapses",
    "log1p_post_input_synapses",
    "depth_y",
    "post_class",
]


def make_tables(n_neurons: int = 60, per_neuron: int = 12, seed: int = 0, size_signal: bool = True):
    """Query synapses, cell types and a neuron-wise split; inhibitory synapses are larger."""
    rng = np.random.default_rng(seed)
    pre_ids = np.arange(n_neurons, dtype=np.int64) + 864691135000000000
    inhibitory = rng.random(n_neurons) < 0.3
    inhibitory[:2] = [True, False]  # both classes in every split below
    inhibitory[-4:] = [True, False, True, False]
    post_ids = np.arange(40, dtype=np.int64) + 864691136000000000
    rows = []
    for neuron, pre in enumerate(pre_ids):
        for _ in range(per_neuron):
            size = rng.lognormal(6.5 if inhibitory[neuron] else 5.0, 0.3) if size_signal else 300.0
            rows.append((pre, rng.choice(post_ids), size, rng.integers(0, 5000)))
    synapses = pd.DataFrame(rows, columns=["pre_pt_root_id", "post_pt_root_id", "size", "y"])
    synapses.insert(0, "id", np.arange(len(synapses), dtype=np.int64) + 1000)
    synapses["ctr_pt_position_x"] = rng.integers(0, 5000, len(synapses))
    synapses["ctr_pt_position_y"] = synapses.pop("y")
    synapses["ctr_pt_position_z"] = rng.integers(0, 100, len(synapses))
    # Post cells: some excitatory, some inhibitory, some of another system, some unlisted.
    listed_post = post_ids[:30]
    cell_types = pd.DataFrame(
        {
            "pt_root_id": np.concatenate([pre_ids, listed_post]),
            "cell_type": "x",
            "classification_system": np.concatenate(
                [
                    np.where(inhibitory, "inhibitory_neuron", "excitatory_neuron"),
                    np.resize(["excitatory_neuron", "inhibitory_neuron", "glia"], 30),
                ]
            ),
        }
    )
    neuron_split = np.resize(["train", "train", "train", "val", "test"], n_neurons)
    neuron_split[:2], neuron_split[-4:] = "train", ["val", "val", "test", "test"]
    label = dict(zip(pre_ids, np.where(inhibitory, "inhibitory", "excitatory")))
    split = dict(zip(pre_ids, neuron_split))
    split_table = synapses.copy()
    split_table["label"] = split_table["pre_pt_root_id"].map(label)
    split_table["pre_cell_type"] = split_table["label"]
    split_table["split"] = split_table["pre_pt_root_id"].map(split)
    return split_table, synapses, cell_types


def write_tables(tmp_path, split_table, synapses, cell_types):
    tmp_path.mkdir(parents=True, exist_ok=True)
    paths = {
        "split_path": tmp_path / "split.parquet",
        "synapses_path": tmp_path / "synapses.parquet",
        "cell_types_path": tmp_path / "cell_types.parquet",
    }
    split_table.to_parquet(paths["split_path"])
    synapses.to_parquet(paths["synapses_path"])
    cell_types.to_parquet(paths["cell_types_path"])
    return paths


def test_features_hold_no_presynaptic_identity():
    split_table, synapses, cell_types = make_tables()
    features = connectivity_features(split_table, synapses, cell_types, COLUMN, CLASSES)
    assert list(features.columns) == FEATURES_WITH_SIZE
    assert len(features) == len(split_table)

    shuffled = split_table.copy()
    rng = np.random.default_rng(1)
    shuffled["pre_pt_root_id"] = rng.permutation(shuffled["pre_pt_root_id"].to_numpy())
    shuffled["label"] = rng.permutation(shuffled["label"].to_numpy())
    shuffled["pre_cell_type"] = rng.permutation(shuffled["pre_cell_type"].to_numpy())
    again = connectivity_features(shuffled, synapses, cell_types, COLUMN, CLASSES)
    pd.testing.assert_frame_equal(features, again)


def test_feature_values_follow_the_tables():
    split_table, synapses, cell_types = make_tables()
    features = connectivity_features(split_table, synapses, cell_types, COLUMN, CLASSES)
    first = split_table.iloc[0]
    connection = ((synapses.pre_pt_root_id == first.pre_pt_root_id)
                  & (synapses.post_pt_root_id == first.post_pt_root_id)).sum()
    post_inputs = (synapses.post_pt_root_id == first.post_pt_root_id).sum()
    assert features["log1p_connection_synapses"].iloc[0] == pytest.approx(np.log1p(connection))
    assert features["log1p_post_input_synapses"].iloc[0] == pytest.approx(np.log1p(post_inputs))
    assert features["depth_y"].iloc[0] == first.ctr_pt_position_y
    assert features["log1p_size"].iloc[0] == pytest.approx(np.log1p(first["size"]))
    assert set(features["post_class"]) == {"excitatory", "inhibitory", "other", "unknown"}
    unlisted = ~split_table["post_pt_root_id"].isin(cell_types["pt_root_id"])
    assert (features.loc[unlisted, "post_class"] == "unknown").all()


def test_split_rows_missing_from_query_are_refused():
    split_table, synapses, cell_types = make_tables()
    with pytest.raises(DataError, match="not in the query synapse table"):
        connectivity_features(split_table, synapses.iloc[5:], cell_types, COLUMN, CLASSES)


def test_trains_on_train_only_and_beats_chance(tmp_path):
    split_table, synapses, cell_types = make_tables()
    paths = write_tables(tmp_path, split_table, synapses, cell_types)
    out_dir = tmp_path / "model"
    metadata = train_connectivity(**paths, label_column="classification_system", classes=CLASSES,
                                  out_dir=out_dir, seed=3)
    assert metadata["size_used"] and metadata["n_train"] == (split_table.split == "train").sum()
    assert "pre_pt_root_id" not in metadata["numeric_features"] + metadata["categorical_features"]
    saved = joblib.load(out_dir / "model.joblib")
    assert saved["metadata"]["sklearn_version"]
    history = pd.read_csv(out_dir / "history.csv")
    assert list(history["epoch"]) == [1]
    assert {"train_loss", "val_loss", "val_balanced_accuracy", "train_accuracy"} <= set(history)

    predictions = predict_connectivity(out_dir / "model.joblib", **paths)
    assert list(predictions.columns) == [
        "id", "pre_pt_root_id", "split", "label", "prob_inhibitory"
    ]
    assert set(predictions["split"]) == {"val", "test"}
    assert predictions["pre_pt_root_id"].dtype == np.int64
    assert predictions["prob_inhibitory"].between(0, 1).all()
    test = predictions[predictions.split == "test"]
    called = np.where(test.prob_inhibitory >= 0.5, "inhibitory", "excitatory")
    recalls = [(called[test.label == c] == c).mean() for c in ("excitatory", "inhibitory")]
    balanced = np.mean(recalls)
    assert balanced > 0.8


def test_fit_ignores_val_and_test_rows(tmp_path):
    """Relabelling val and test synapses must not change the fitted model."""
    split_table, synapses, cell_types = make_tables()
    flipped = split_table.copy()
    held_out = flipped.split != "train"
    flipped.loc[held_out, "label"] = flipped.loc[held_out, "label"].map(
        {"excitatory": "inhibitory", "inhibitory": "excitatory"}
    )
    coefficients = []
    for name, table in (("a", split_table), ("b", flipped)):
        paths = write_tables(tmp_path / name, table, synapses, cell_types)
        train_connectivity(**paths, label_column="classification_system", classes=CLASSES,
                           out_dir=tmp_path / name / "model", seed=0)
        pipeline = joblib.load(tmp_path / name / "model" / "model.joblib")["pipeline"]
        coefficients.append(pipeline[-1].coef_)
    np.testing.assert_allclose(coefficients[0], coefficients[1])


def test_without_size_the_model_says_so(tmp_path):
    split_table, synapses, cell_types = make_tables(size_signal=False)
    paths = write_tables(tmp_path, split_table.drop(columns="size"), synapses.drop(columns="size"),
                         cell_types)
    metadata = train_connectivity(**paths, label_column="classification_system", classes=CLASSES,
                                  out_dir=tmp_path / "model", seed=0)
    assert not metadata["size_used"]
    assert "log1p_size" not in metadata["numeric_features"]
    assert any("size" in note for note in metadata["notes"])
    model = tmp_path / "model" / "model.joblib"
    predictions = predict_connectivity(model, **paths, splits=("test",))
    assert set(predictions["split"]) == {"test"}


def test_train_with_one_class_is_refused(tmp_path):
    split_table, synapses, cell_types = make_tables()
    split_table.loc[split_table.split == "train", "label"] = "excitatory"
    paths = write_tables(tmp_path, split_table, synapses, cell_types)
    with pytest.raises(DataError, match="train split holds only"):
        train_connectivity(**paths, label_column="classification_system", classes=CLASSES,
                           out_dir=tmp_path / "model", seed=0)


def test_missing_label_column_in_cell_types_is_named(tmp_path):
    split_table, synapses, cell_types = make_tables()
    with pytest.raises(DataError, match="cell_class"):
        connectivity_features(split_table, synapses, cell_types, "cell_class", CLASSES)
