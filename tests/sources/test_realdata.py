"""Real MICrONS exports (pinky100 v185, minnie65 v1718) through files -> label -> split.

The tables live in ``../shared/realdata`` (see its README); these tests skip when it is absent.
"""

from __future__ import annotations

import pandas as pd
import pytest

from synapse_ei.curation.labels import label_synapses
from synapse_ei.curation.splits import split_by_neuron
from synapse_ei.errors import DataError
from synapse_ei.sources import files

FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}
PINKY_CLASSES = {"e": "excitatory", "i": "inhibitory"}
MINNIE_CLASSES = {"excitatory_neuron": "excitatory", "inhibitory_neuron": "inhibitory"}
# pni_synapses_v185 export names -> CAVE synapses_pni_2 names.
PINKY_COLUMNS = {
    "pre_root_id": "pre_pt_root_id",
    "post_root_id": "post_pt_root_id",
    "cleft_vx": "size",
    **{
        f"{where}_pos_{axis}_vx": f"{where}_pt_position_{axis}"
        for where in ("pre", "ctr", "post")
        for axis in "xyz"
    },
}


@pytest.fixture(scope="module")
def pinky(realdata):
    folder = realdata / "pinky100_v185"
    return files.load(
        folder / "paired_synapses.csv",
        folder / "soma_valence_v185.csv",
        em_path="precomputed://gs://not-read",
        columns={"synapses": PINKY_COLUMNS},
    )


@pytest.fixture(scope="module")
def minnie(realdata):
    folder = realdata / "minnie65_v1718"
    return files.load(folder / "synapses.csv", folder / "cell_types.csv", em_path="not-read")


def test_pinky_readme_counts_hold_on_the_raw_rows(realdata):
    """The README's counts join raw rows, before any of our drop rules."""
    folder = realdata / "pinky100_v185"
    synapses = pd.read_csv(folder / "paired_synapses.csv", dtype={"pre_root_id": str})
    cells = pd.read_csv(folder / "soma_valence_v185.csv", dtype={"pt_root_id": str})
    assert len(synapses) == 6252 and len(cells) == 456
    first_row = cells.drop_duplicates("pt_root_id").set_index("pt_root_id")["cell_type"]
    counts = synapses["pre_root_id"].map(first_row).fillna("none").value_counts().to_dict()
    assert counts == {"none": 2910, "e": 1492, "i": 1129, "g": 721}
    twice = cells[cells["pt_root_id"].duplicated(keep=False)]
    assert twice["pt_root_id"].nunique() == 3 and set(twice["cell_type"]) == {"g"}


def test_pinky_loads_with_mapped_columns_and_drops_repeated_rows(pinky):
    # paired_synapses lists each synapse once per reciprocal pair it belongs to: half the rows
    # repeat another verbatim.
    assert pinky.provenance["repeated_synapse_rows_dropped"] == 3126
    assert len(pinky.synapses) == 3126 and pinky.synapses["id"].is_unique
    assert (pinky.synapses["pre_pt_root_id"] // 10**9 == 648518346).all()
    assert "size" in pinky.synapses and "post_pt_position_z" in pinky.synapses
    assert list(pinky.cell_types.columns) == ["pt_root_id", "cell_type"]


def test_pinky_labels_by_cell_type(pinky):
    labelled, stats = label_synapses(pinky.synapses, pinky.cell_types, "cell_type", PINKY_CLASSES)
    # On unique synapses: glial roots listed twice are dropped as duplicates (37 synapses), the
    # other glial ones as not mapped (401); together the README's 721 raw glial rows, deduplicated.
    assert stats["dropped"] == {
        "pre_root_id_zero": 0,
        "no_cell_type": 1422,
        "duplicate_cell_type": 37,
        "not_mapped": 401,
        "autapse": 16,
    }
    assert stats["not_mapped_values"] == {"g": 401}
    assert stats["by_label"] == {"excitatory": 602, "inhibitory": 648}
    assert stats["neurons_by_label"] == {"excitatory": 166, "inhibitory": 26}
    assert stats["labelled"] + sum(stats["dropped"].values()) == 3126
    assert set(zip(labelled["pre_cell_type"], labelled["label"])) == {
        ("e", "excitatory"),
        ("i", "inhibitory"),
    }


def test_minnie_labels_by_classification_system(minnie, realdata):
    raw = pd.read_csv(realdata / "minnie65_v1718" / "synapses.csv", dtype=str)
    assert minnie.synapses["pre_pt_root_id"].astype(str).tolist() == raw["pre_pt_root_id"].tolist()
    labelled, stats = label_synapses(
        minnie.synapses, minnie.cell_types, "classification_system", MINNIE_CLASSES
    )
    assert stats["synapses_in"] == 4794
    assert stats["dropped"] == {
        "pre_root_id_zero": 0,
        "no_cell_type": 4059,
        "duplicate_cell_type": 0,
        "not_mapped": 30,
        "autapse": 0,
    }
    assert stats["not_mapped_values"] == {"nonneuron": 30}
    assert stats["by_label"] == {"excitatory": 132, "inhibitory": 573}
    assert stats["neurons_by_label"] == {"excitatory": 120, "inhibitory": 204}
    assert set(labelled["post_pt_root_id"]) == {864691135774053371}


@pytest.mark.parametrize("dataset", ["pinky", "minnie"])
def test_real_split_is_disjoint_and_consistent(request, dataset):
    tables = request.getfixturevalue(dataset)
    column, classes = (
        ("cell_type", PINKY_CLASSES)
        if dataset == "pinky"
        else ("classification_system", MINNIE_CLASSES)
    )
    labelled, _ = label_synapses(tables.synapses, tables.cell_types, column, classes)
    result, audit = split_by_neuron(labelled, FRACTIONS, seed=11)

    assert len(result) == len(labelled)
    per_neuron = result.groupby("pre_pt_root_id").agg(
        splits=("split", "nunique"), labels=("label", "nunique")
    )
    assert (per_neuron["splits"] == 1).all() and (per_neuron["labels"] == 1).all()
    assert audit["pre_neurons_in_two_splits"] == 0 and audit["synapses_in_two_splits"] == 0
    for name in ("train", "val", "test"):
        assert min(audit["neurons"][name].values()) >= 1


def test_pinky_disjoint_postsynaptic(pinky):
    labelled, _ = label_synapses(pinky.synapses, pinky.cell_types, "cell_type", PINKY_CLASSES)
    result, audit = split_by_neuron(labelled, FRACTIONS, seed=11, disjoint_postsynaptic=True)
    assert audit["neurons_in_two_splits_any_role"] == 0
    roles = pd.concat(
        [
            result[[role, "split"]].set_axis(["root", "split"], axis=1)
            for role in ("pre_pt_root_id", "post_pt_root_id")
        ]
    )
    assert (roles.groupby("root")["split"].nunique() == 1).all()
    assert audit["dropped"]["post_in_other_split"] == len(labelled) - len(result) > 0


def test_minnie_disjoint_postsynaptic_is_impossible_with_one_target(minnie):
    labelled, _ = label_synapses(
        minnie.synapses, minnie.cell_types, "classification_system", MINNIE_CLASSES
    )
    with pytest.raises(DataError, match="disjoint_postsynaptic to false"):
        split_by_neuron(labelled, FRACTIONS, seed=11, disjoint_postsynaptic=True)


def test_pinky_cell_types_appended_twice_label_as_once(pinky, realdata, tmp_path):
    """An export appended to itself: its 456 verbatim repeats are dropped and counted, while the
    three glial roots with two different somas still drop their synapses as duplicated root ids."""
    folder = realdata / "pinky100_v185"
    header, rows = (folder / "soma_valence_v185.csv").read_text().rstrip("\n").split("\n", 1)
    twice = tmp_path / "soma_valence_twice.csv"
    twice.write_text(f"{header}\n{rows}\n{rows}\n")  # appended without a second header
    doubled = files.load(
        folder / "paired_synapses.csv", twice, em_path="x", columns={"synapses": PINKY_COLUMNS}
    )
    assert doubled.provenance["repeated_cell_type_rows_dropped"] == 456
    pd.testing.assert_frame_equal(doubled.cell_types, pinky.cell_types)
    once = label_synapses(pinky.synapses, pinky.cell_types, "cell_type", PINKY_CLASSES)
    labelled, stats = label_synapses(
        doubled.synapses, doubled.cell_types, "cell_type", PINKY_CLASSES,
        repeated_cell_type_rows=doubled.provenance["repeated_cell_type_rows_dropped"],
    )
    pd.testing.assert_frame_equal(labelled, once[0])
    assert stats["dropped"] == once[1]["dropped"] and stats["dropped"]["duplicate_cell_type"] == 37
    assert stats["duplicated_root_ids"] == 3 and stats["repeated_cell_type_rows_dropped"] == 456


def test_minnie_numeric_class_codes_in_parquet_label_as_the_names(minnie, realdata, tmp_path):
    """classification_system exported as codes 1/2/3 in parquet, one code missing (a float
    column): the keys 1 and 2 label exactly what the names did."""
    folder = realdata / "minnie65_v1718"
    cells = pd.read_csv(folder / "cell_types.csv", dtype={"pt_root_id": "int64"})
    codes = {"excitatory_neuron": 1, "inhibitory_neuron": 2, "nonneuron": 3}
    cells["classification_system"] = cells["classification_system"].map(codes).astype("float64")
    cells.loc[cells["classification_system"] == 3, "classification_system"] = None
    cells.to_parquet(tmp_path / "cell_types.parquet")
    coded = files.load(folder / "synapses.csv", tmp_path / "cell_types.parquet", em_path="x")
    # The Snakefile hands the config over as JSON, so YAML's `1:` arrives as the text "1".
    labelled, stats = label_synapses(
        coded.synapses, coded.cell_types, "classification_system",
        {"1": "excitatory", "2": "inhibitory"},
    )
    by_name, named = label_synapses(
        minnie.synapses, minnie.cell_types, "classification_system", MINNIE_CLASSES
    )
    pd.testing.assert_frame_equal(labelled, by_name)
    assert stats["by_label"] == named["by_label"] == {"excitatory": 132, "inhibitory": 573}
    assert stats["not_mapped_values"] == {"<missing>": 30}
