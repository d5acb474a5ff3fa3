"""Neuron-level split: no presynaptic neuron (or synapse) in two splits, both classes everywhere."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from synapse_ei.curation.splits import split_by_neuron
from synapse_ei.errors import DataError

FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}
ROOT = 864691135000000000


def labelled_table(n_exc: int, n_inh: int, per_neuron: int = 4, seed: int = 0) -> pd.DataFrame:
    """``per_neuron`` synapses per neuron, onto postsynaptic cells that are not neurons here."""
    rng = np.random.default_rng(seed)
    pre = np.repeat(ROOT + np.arange(n_exc + n_inh), per_neuron)
    label = np.repeat(["excitatory"] * n_exc + ["inhibitory"] * n_inh, per_neuron)
    n = len(pre)
    return pd.DataFrame(
        {
            "id": np.arange(1, n + 1, dtype="int64"),
            "pre_pt_root_id": pre.astype("int64"),
            "post_pt_root_id": (ROOT + 10_000 + rng.integers(0, 3 * n, n)).astype("int64"),
            "ctr_pt_position_x": rng.integers(0, 1000, n),
            "label": label,
        }
    )


def neuron_splits(result: pd.DataFrame) -> pd.Series:
    return result.groupby("pre_pt_root_id")["split"].first()


def test_every_synapse_kept_once_and_no_neuron_in_two_splits():
    table = labelled_table(40, 10)
    result, audit = split_by_neuron(table, FRACTIONS, seed=3)

    assert sorted(result["id"]) == sorted(table["id"])
    assert set(result["split"]) == {"train", "val", "test"}
    assert (result.groupby("pre_pt_root_id")["split"].nunique() == 1).all()
    assert audit["pre_neurons_in_two_splits"] == 0
    assert audit["synapses_in_two_splits"] == 0
    assert audit["dropped"] == {"post_in_other_split": 0}
    assert list(result.columns) == [*table.columns, "split"]
    assert result["id"].is_monotonic_increasing


def test_fractions_of_neurons_per_class_are_stratified():
    result, audit = split_by_neuron(labelled_table(50, 10), FRACTIONS, seed=1)
    assert audit["neurons"] == {
        "train": {"excitatory": 30, "inhibitory": 6},
        "val": {"excitatory": 10, "inhibitory": 2},
        "test": {"excitatory": 10, "inhibitory": 2},
    }
    assert audit["synapses"]["train"] == {"excitatory": 120, "inhibitory": 24}
    assert audit["synapses_per_neuron"]["val"] == {"min": 4, "median": 4.0, "max": 4}
    assert audit["synapses_in"] == audit["synapses_out"] == 240
    counted = result.groupby(["split", "label"])["pre_pt_root_id"].nunique()
    assert counted[("test", "inhibitory")] == 2


def test_a_small_class_still_reaches_every_split():
    _, audit = split_by_neuron(labelled_table(30, 3), {"train": 0.8, "val": 0.1, "test": 0.1}, 0)
    assert [audit["neurons"][name]["inhibitory"] for name in ("train", "val", "test")] == [1, 1, 1]


def test_too_few_neurons_names_class_and_counts():
    with pytest.raises(DataError, match=r"'inhibitory' has 2 presynaptic neuron\(s\); at least 3"):
        split_by_neuron(labelled_table(20, 2), FRACTIONS, seed=0)


def test_same_seed_same_split_whatever_the_row_order():
    table = labelled_table(30, 8)
    first, _ = split_by_neuron(table, FRACTIONS, seed=7)
    shuffled = table.sample(frac=1, random_state=1)
    again, _ = split_by_neuron(shuffled, FRACTIONS, seed=7)
    pd.testing.assert_frame_equal(first, again)
    other, _ = split_by_neuron(table, FRACTIONS, seed=8)
    assert not neuron_splits(first).equals(neuron_splits(other))


@pytest.mark.parametrize(
    ("fractions", "match"),
    [
        ({"train": 0.6, "val": 0.4}, "must be exactly"),
        ({"train": 0.6, "val": 0.2, "test": 0.2, "extra": 0.0}, "must be exactly"),
        ({"train": 0.6, "val": 0.3, "test": 0.3}, "sum to 1.2"),
        ({"train": 0.8, "val": 0.2, "test": 0.0}, r"split\.fractions\.test"),
        ({"train": "a", "val": 0.2, "test": 0.2}, "must all be numbers"),
    ],
)
def test_bad_fractions_are_clear_errors(fractions, match):
    with pytest.raises(DataError, match=match):
        split_by_neuron(labelled_table(10, 5), fractions, seed=0)


def test_a_neuron_with_two_labels_is_an_error_naming_it():
    table = labelled_table(10, 5)
    table.loc[0, "label"] = "inhibitory"
    with pytest.raises(DataError, match=f"neuron {ROOT} has synapses with different labels"):
        split_by_neuron(table, FRACTIONS, seed=0)


def test_disjoint_postsynaptic_assigns_posts_and_drops_crossing_synapses():
    table = labelled_table(30, 10, per_neuron=3)
    pre_split = neuron_splits(split_by_neuron(table, FRACTIONS, seed=2)[0])
    by_split = {name: pre_split.index[pre_split == name].tolist() for name in pre_split.unique()}
    ids = {"majority": [], "tie": [], "own": []}

    def add(pre: int, post: int, kind: str) -> None:
        row = table[table["pre_pt_root_id"] == pre].iloc[[0]].copy()
        row["id"] = int(table["id"].max()) + 1
        row["post_pt_root_id"] = post
        ids[kind].append(int(row["id"].iloc[0]))
        table.loc[len(table)] = row.iloc[0]

    majority_post, tie_post = ROOT + 900_000, ROOT + 900_001
    for pre in by_split["train"][:3] + by_split["test"][:1]:  # 3 train votes beat 1 test vote
        add(pre, majority_post, "majority")
    for pre in by_split["test"][:1] + by_split["val"][:1]:  # a tie goes to val (before test)
        add(pre, tie_post, "tie")
    own_post = by_split["val"][0]  # a presynaptic neuron keeps its own split as a target
    for pre in by_split["train"][:2]:
        add(pre, own_post, "own")

    baseline = split_by_neuron(table, FRACTIONS, seed=2, disjoint_postsynaptic=False)[1]
    result, audit = split_by_neuron(table, FRACTIONS, seed=2, disjoint_postsynaptic=True)
    kept = set(result["id"])
    assert [i in kept for i in ids["majority"]] == [True, True, True, False]
    assert [i in kept for i in ids["tie"]] == [False, True]
    assert not any(i in kept for i in ids["own"])

    assert (result.groupby("post_pt_root_id")["split"].nunique() == 1).all()
    assert baseline["post_neurons_in_two_splits"] >= 2  # at least the majority and tie posts
    assert audit["post_neurons_in_two_splits"] == 0
    assert audit["neurons_in_two_splits_any_role"] == 0
    assert audit["pre_neurons_in_two_splits"] == 0
    assert audit["dropped"]["post_in_other_split"] == len(table) - len(result)
    assert audit["synapses_out"] == len(result)


def test_disjoint_postsynaptic_that_empties_a_split_is_an_error():
    table = labelled_table(10, 5)
    table["post_pt_root_id"] = ROOT + 999_999  # every synapse onto one cell: one split survives
    with pytest.raises(DataError, match="disjoint_postsynaptic"):
        split_by_neuron(table, FRACTIONS, seed=0, disjoint_postsynaptic=True)


@settings(max_examples=25, deadline=None)
@given(
    n_exc=st.integers(3, 25),
    n_inh=st.integers(3, 25),
    val=st.floats(0.05, 0.4),
    test=st.floats(0.05, 0.4),
    seed=st.integers(0, 2**31 - 2),
)
def test_any_valid_input_splits_cleanly(n_exc, n_inh, val, test, seed):
    fractions = {"train": 1 - val - test, "val": val, "test": test}
    result, audit = split_by_neuron(labelled_table(n_exc, n_inh, per_neuron=2), fractions, seed)
    assert audit["pre_neurons_in_two_splits"] == 0
    assert (result.groupby("pre_pt_root_id")["split"].nunique() == 1).all()
    for name in ("train", "val", "test"):
        assert audit["neurons"][name]["excitatory"] >= 1
        assert audit["neurons"][name]["inhibitory"] >= 1
    assert sum(audit["neurons"][name]["inhibitory"] for name in audit["neurons"]) == n_inh
