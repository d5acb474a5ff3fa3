"""E/I labels from the presynaptic cell's class: each synapse labelled or dropped for one reason."""

from __future__ import annotations

import pandas as pd
import pytest

from synapse_ei.curation.labels import label_synapses
from synapse_ei.errors import DataError

CLASSES = {"excitatory_neuron": "excitatory", "inhibitory_neuron": "inhibitory"}
ROOT = 864691135000000000  # 18-digit ids, as in MICrONS


def cell_types() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "pt_root_id": [ROOT + i for i in (1, 2, 3, 4, 4, 5, 6)],
            "cell_type": ["23P", "BC", "astrocyte", "23P", "23P", "MC", "odd"],
            "classification_system": [
                "excitatory_neuron",
                "inhibitory_neuron",
                "nonneuron",
                "excitatory_neuron",  # root 4 listed twice: a multi-soma merge
                "excitatory_neuron",
                "inhibitory_neuron",
                None,
            ],
        }
    )


def synapses() -> pd.DataFrame:
    pre = [1, 2, 1, 2, 0, 9, 4, 3, 3, 6, 1, 5]
    post = [50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 1, 60]
    n = len(pre)
    return pd.DataFrame(
        {
            # Ids deliberately out of order: the output is sorted by id.
            "id": list(range(n, 0, -1)),
            "pre_pt_root_id": [ROOT + p if p else 0 for p in pre],
            "post_pt_root_id": [ROOT + p for p in post],
            "ctr_pt_position_x": range(n),
            "ctr_pt_position_y": range(n),
            "ctr_pt_position_z": range(n),
            "size": range(100, 100 + n),
        }
    )


def test_each_synapse_labelled_or_dropped_for_its_first_reason():
    labelled, stats = label_synapses(synapses(), cell_types(), "classification_system", CLASSES)

    assert stats["synapses_in"] == 12
    assert stats["dropped"] == {
        "pre_root_id_zero": 1,
        "no_cell_type": 1,
        "duplicate_cell_type": 1,
        "not_mapped": 3,  # two nonneuron, one missing value
        "autapse": 1,
    }
    assert stats["not_mapped_values"] == {"nonneuron": 2, "<missing>": 1}
    assert stats["labelled"] == len(labelled) == 5
    assert stats["labelled"] + sum(stats["dropped"].values()) == stats["synapses_in"]
    assert stats["by_label"] == {"excitatory": 2, "inhibitory": 3}
    assert stats["neurons_by_label"] == {"excitatory": 1, "inhibitory": 2}


def test_output_keeps_synapse_columns_adds_label_and_cell_type_sorted_by_id():
    labelled, _ = label_synapses(synapses(), cell_types(), "classification_system", CLASSES)
    assert list(labelled.columns) == [*synapses().columns, "label", "pre_cell_type"]
    assert labelled["id"].is_monotonic_increasing
    assert list(labelled.index) == list(range(len(labelled)))
    assert labelled["pre_pt_root_id"].dtype == "int64"
    by_pre = labelled.drop_duplicates("pre_pt_root_id").set_index("pre_pt_root_id")
    assert by_pre.loc[ROOT + 1, "label"] == "excitatory"
    assert by_pre.loc[ROOT + 1, "pre_cell_type"] == "23P"
    assert by_pre.loc[ROOT + 5, "label"] == "inhibitory"
    assert by_pre.loc[ROOT + 5, "pre_cell_type"] == "MC"
    # Positions travel with each synapse.
    original = synapses().set_index("id")
    for _, row in labelled.iterrows():
        assert row["ctr_pt_position_x"] == original.loc[row["id"], "ctr_pt_position_x"]


def test_duplicate_cell_type_rows_drop_even_when_they_agree():
    labelled, stats = label_synapses(synapses(), cell_types(), "classification_system", CLASSES)
    assert ROOT + 4 not in set(labelled["pre_pt_root_id"])
    assert stats["dropped"]["duplicate_cell_type"] == 1


def test_other_column_and_classes_such_as_pinky_cell_type():
    cells = pd.DataFrame({"pt_root_id": [1, 2, 3], "cell_type": ["e", "i", "g"]})
    syn = pd.DataFrame({"id": [1, 2, 3], "pre_pt_root_id": [1, 2, 3], "post_pt_root_id": [9, 9, 9]})
    labelled, stats = label_synapses(
        syn, cells, "cell_type", {"e": "excitatory", "i": "inhibitory"}
    )
    assert labelled["label"].tolist() == ["excitatory", "inhibitory"]
    assert stats["not_mapped_values"] == {"g": 1}


def test_missing_column_names_it_and_the_available_ones():
    with pytest.raises(DataError, match=r"'cell_class'.*classification_system"):
        label_synapses(synapses(), cell_types(), "cell_class", CLASSES)


def test_class_mapped_to_an_unknown_label_names_the_key():
    with pytest.raises(DataError, match=r"labels\.classes\.inhibitory_neuron.*'inh'"):
        label_synapses(
            synapses(),
            cell_types(),
            "classification_system",
            {"excitatory_neuron": "excitatory", "inhibitory_neuron": "inh"},
        )


def test_nothing_labelled_is_an_error_with_a_hint():
    with pytest.raises(DataError, match=r"No synapse could be labelled.*labels\.column"):
        label_synapses(synapses(), cell_types(), "cell_type", CLASSES)


def test_only_one_class_is_an_error_naming_the_missing_class():
    with pytest.raises(DataError, match=r"no inhibitory synapse.*labels\.classes"):
        label_synapses(
            synapses(), cell_types(), "classification_system", {"excitatory_neuron": "excitatory"}
        )


def test_repeated_synapse_id_is_an_error():
    frame = synapses()
    frame.loc[1, "id"] = frame.loc[0, "id"]
    with pytest.raises(DataError, match="appears more than once"):
        label_synapses(frame, cell_types(), "classification_system", CLASSES)


def test_a_class_cap_keeps_a_seeded_sample_of_each_class():
    many = pd.DataFrame(
        {
            "id": range(1, 201),
            "pre_pt_root_id": [ROOT + (1 if i % 4 else 2) for i in range(200)],  # 150 E, 50 I
            "post_pt_root_id": [ROOT + 100 + i for i in range(200)],
            "ctr_pt_position_x": 0, "ctr_pt_position_y": 0, "ctr_pt_position_z": 0,
        }
    )  # fmt: skip
    labelled, stats = label_synapses(many, cell_types(), "classification_system", CLASSES,
                                     max_synapses_per_class=40, seed=3)  # fmt: skip
    assert labelled["label"].value_counts().to_dict() == {"excitatory": 40, "inhibitory": 40}
    assert stats["dropped"]["class_cap"] == 120
    assert stats["labelled"] + sum(stats["dropped"].values()) == stats["synapses_in"]
    assert labelled["id"].is_monotonic_increasing
    again, _ = label_synapses(many, cell_types(), "classification_system", CLASSES,
                              max_synapses_per_class=40, seed=3)  # fmt: skip
    other, _ = label_synapses(many, cell_types(), "classification_system", CLASSES,
                              max_synapses_per_class=40, seed=4)  # fmt: skip
    assert again["id"].tolist() == labelled["id"].tolist() != other["id"].tolist()
    with pytest.raises(DataError, match="labels.max_synapses_per_class"):
        label_synapses(many, cell_types(), "classification_system", CLASSES,
                       max_synapses_per_class=0)  # fmt: skip


def test_verbatim_repeats_the_source_dropped_are_counted_in_the_stats():
    _, stats = label_synapses(
        synapses(), cell_types(), "classification_system", CLASSES, repeated_cell_type_rows=7
    )
    assert stats["repeated_cell_type_rows_dropped"] == 7
    assert stats["duplicated_root_ids"] == 1  # root 4


def test_nothing_labelled_for_duplicated_root_ids_says_so_not_check_the_classes():
    """Every typed root listed twice with different rows (e.g. a re-export with new ids)."""
    cells = cell_types()
    twice = pd.concat([cells, cells.assign(cell_type=cells["cell_type"] + "_v2")])
    with pytest.raises(DataError, match="No synapse could be labelled") as error:
        label_synapses(synapses(), twice, "classification_system", CLASSES)
    said = str(error.value)
    assert "duplicated root ids" in said and "6 root id(s)" in said
    assert "Check labels.column" not in said


@pytest.mark.parametrize(
    "codes",
    [
        pd.Series([1, 2, 3, 1, 1, 2, 4], dtype="int64"),
        pd.Series([1, 2, 3, 1, 1, 2, None], dtype="float64"),  # a gap: pandas holds it as float
        pd.Series([1, 2, 3, 1, 1, 2, None], dtype="Int64"),
        pd.Series(["1.0", "2.0", "3.0", "1.0", "1.0", "2.0", None], dtype=object),  # its CSV
    ],
    ids=["int", "float-with-gap", "nullable-int", "csv-of-floats"],
)
@pytest.mark.parametrize(
    "classes",
    [{"1": "excitatory", "2": "inhibitory"}, {1: "excitatory", 2: "inhibitory"},
     {"1.0": "excitatory", "2.0": "inhibitory"}],
    ids=["text-keys", "yaml-int-keys", "float-keys"],
)
def test_numeric_class_codes_match_the_keys_the_config_writes(codes, classes):
    cells = cell_types().assign(code=codes.to_numpy())
    labelled, stats = label_synapses(synapses(), cells, "code", classes)
    reference, _ = label_synapses(synapses(), cell_types(), "classification_system", CLASSES)
    assert labelled["label"].tolist() == reference["label"].tolist()
    assert set(stats["not_mapped_values"]) <= {"3", "4", "<missing>"}


def test_numeric_cell_type_names_read_as_written():
    cells = cell_types().assign(cell_type=[23, 5, 9, 23, 23, 6, None])
    labelled, _ = label_synapses(synapses(), cells, "classification_system", CLASSES)
    assert set(labelled["pre_cell_type"]) == {"23", "5", "6"}
