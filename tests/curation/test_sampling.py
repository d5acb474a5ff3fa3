import numpy as np
import pandas as pd
import pytest

from synapse_ei.curation.sampling import (
    cap_per_group,
    check_cap,
    hashed_keys,
    shuffle_keys,
    uniform_keys,
)
from synapse_ei.errors import DataError


def table(n_per_group=(7, 3, 12), seed=0):
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(len(n_per_group)) + 100, n_per_group)
    ids = rng.permutation(10_000)[: len(groups)] + 1
    return pd.DataFrame({"id": ids, "pre_pt_root_id": groups, "size": rng.random(len(ids))})


@pytest.mark.parametrize("keys", [
    lambda frame: hashed_keys(frame["id"].to_numpy(), 4),
    lambda frame: shuffle_keys(len(frame), 4),
    lambda frame: uniform_keys(len(frame), 4),
])  # fmt: skip
def test_each_group_keeps_at_most_cap_rows_sorted_by_id(keys):
    frame = table()
    kept = cap_per_group(frame, "pre_pt_root_id", 5, keys(frame), "some.key")
    assert kept["pre_pt_root_id"].value_counts().to_dict() == {100: 5, 101: 3, 102: 5}
    assert kept["id"].is_monotonic_increasing and list(kept.index) == list(range(len(kept)))
    # Whole rows are kept, never mixed.
    merged = kept.merge(frame, on="id", suffixes=("", "_in"))
    assert (merged["size"] == merged["size_in"]).all()


def test_the_sample_is_fixed_by_the_seed():
    frame = table(n_per_group=(200,))
    draw = lambda seed: cap_per_group(  # noqa: E731
        frame, "pre_pt_root_id", 20, uniform_keys(len(frame), seed), "k")["id"].tolist()
    assert draw(1) == draw(1)
    assert draw(1) != draw(2)


def test_the_smallest_keys_are_kept_and_ties_go_to_the_smaller_id():
    frame = pd.DataFrame({"id": [5, 3, 9, 1], "g": ["a", "a", "a", "b"]})
    kept = cap_per_group(frame, "g", 2, np.array([0.1, 0.5, 0.5, 0.9]), "k")
    assert kept["id"].tolist() == [1, 3, 5]


def test_hashed_keys_give_the_same_sample_batch_by_batch_as_whole():
    frame = table(n_per_group=(40, 25, 60), seed=2)
    whole = cap_per_group(frame, "pre_pt_root_id", 10, hashed_keys(frame["id"], 7), "k")
    batches = [part for _, part in frame.groupby("pre_pt_root_id")]
    parts = [cap_per_group(p, "pre_pt_root_id", 10, hashed_keys(p["id"], 7), "k") for p in batches]
    together = pd.concat(parts).sort_values("id").reset_index(drop=True)
    pd.testing.assert_frame_equal(whole, together)


def test_shuffle_keys_are_the_order_of_a_seeded_dataframe_sample():
    # The label stage capped with DataFrame.sample before; its runs keep their rows.
    frame = table(n_per_group=(30, 30))
    shuffled = frame.sample(frac=1.0, random_state=np.random.default_rng(11))
    ranks = shuffle_keys(len(frame), 11)
    assert frame.index[np.argsort(ranks)].tolist() == shuffled.index.tolist()


@pytest.mark.parametrize("cap", [0, -1, True, 2.5, "3"])
def test_a_bad_cap_names_its_config_key(cap):
    with pytest.raises(DataError, match="labels.max_synapses_per_class"):
        check_cap(cap, "labels.max_synapses_per_class")
    with pytest.raises(DataError, match="predict.max_synapses_per_neuron"):
        cap_per_group(
            table(), "pre_pt_root_id", cap, np.zeros(22), "predict.max_synapses_per_neuron"
        )


def test_no_cap_is_allowed():
    check_cap(None, "k")
