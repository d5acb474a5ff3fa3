"""The files source: exports on disk become the shared schema, or a DataError naming the file."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest

from synapse_ei import tables
from synapse_ei.errors import DataError
from synapse_ei.sources import files, load_source

BIG_ROOT = 864691135774053371  # 18 digits: a float64 would round it


def synapse_export() -> pd.DataFrame:
    """A synapse export with non-CAVE names, an extra column and 18-digit root ids."""
    return pd.DataFrame(
        {
            "id": [3, 1, 2],
            "pre_root_id": [BIG_ROOT, BIG_ROOT + 1, BIG_ROOT + 2],
            "post_root_id": [BIG_ROOT + 5, BIG_ROOT + 6, BIG_ROOT + 7],
            "ctr_x": [100, 200, 300],
            "ctr_y": [10, 20, 30],
            "ctr_z": [1, 2, 3],
            "cleft_vx": [50, 60, 70],
            "ctr_pt_x_nm": [400, 800, 1200],
        }
    )


SYNAPSE_MAP = {
    "pre_root_id": "pre_pt_root_id",
    "post_root_id": "post_pt_root_id",
    "ctr_x": "ctr_pt_position_x",
    "ctr_y": "ctr_pt_position_y",
    "ctr_z": "ctr_pt_position_z",
    "cleft_vx": "size",
}


def cell_export() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "root": [BIG_ROOT, BIG_ROOT + 1],
            "cell_type": ["e", "i"],
            "pt_position": ["[1 2 3]", "[4 5 6]"],
        }
    )


@pytest.fixture
def exports(tmp_path: Path) -> tuple[Path, Path]:
    synapses, cells = tmp_path / "syn.csv", tmp_path / "cells.csv"
    synapse_export().to_csv(synapses, index=False)
    cell_export().to_csv(cells, index=False)
    return synapses, cells


def load(synapses: Path, cells: Path, **kwargs) -> files.SourceTables:
    columns = kwargs.pop("columns", {"synapses": SYNAPSE_MAP, "cell_types": {"root": "pt_root_id"}})
    return files.load(
        synapses, cells, em_path="precomputed://file:///em", columns=columns, **kwargs
    )


def test_csv_export_is_renamed_typed_and_trimmed(exports):
    synapses, cells = exports
    result = load(synapses, cells, position_resolution=[8, 8, 40])

    assert list(result.synapses.columns) == [*tables.SYNAPSE_REQUIRED, "size"]
    assert list(result.cell_types.columns) == ["pt_root_id", "cell_type"]
    for column in [*tables.SYNAPSE_REQUIRED, "size"]:
        assert result.synapses[column].dtype == "int64"
    # 18-digit ids survive the CSV round trip exactly.
    assert result.synapses["pre_pt_root_id"].tolist() == [BIG_ROOT, BIG_ROOT + 1, BIG_ROOT + 2]
    assert result.cell_types["pt_root_id"].tolist() == [BIG_ROOT, BIG_ROOT + 1]
    assert result.position_resolution == (8.0, 8.0, 40.0)
    assert result.em_path == "precomputed://file:///em"


def test_provenance_names_files_rows_and_checksums(exports):
    synapses, cells = exports
    provenance = load(synapses, cells).provenance
    assert provenance["source"] == "files"
    assert provenance["synapses"] == str(synapses)
    assert provenance["cell_types"] == str(cells)
    assert provenance["em_path"] == "precomputed://file:///em"
    assert provenance["rows"] == {"synapses": 3, "cell_types": 2}
    assert provenance["sha256"]["synapses"] == hashlib.sha256(synapses.read_bytes()).hexdigest()
    assert provenance["sha256"]["cell_types"] == hashlib.sha256(cells.read_bytes()).hexdigest()


def test_parquet_reads_like_csv_and_keeps_optional_columns(tmp_path, exports):
    csv_synapses, csv_cells = exports
    frame = synapse_export().rename(columns=SYNAPSE_MAP)
    for axis in "xyz":
        frame[f"pre_pt_position_{axis}"] = frame[f"ctr_pt_position_{axis}"] - 1
    synapses = tmp_path / "syn.parquet"
    frame.to_parquet(synapses)
    cells = tmp_path / "cells.parquet"
    cell_export().rename(columns={"root": "pt_root_id"}).assign(
        classification_system=["excitatory_neuron", "inhibitory_neuron"]
    ).to_parquet(cells)

    result = files.load(synapses, cells, em_path="x")
    assert "pre_pt_position_x" in result.synapses
    assert list(result.cell_types.columns) == ["pt_root_id", "cell_type", "classification_system"]
    from_csv = load(csv_synapses, csv_cells).synapses
    pd.testing.assert_frame_equal(result.synapses[from_csv.columns], from_csv)


def test_repeated_rows_are_dropped_and_counted(tmp_path, exports):
    _, cells = exports
    synapses = tmp_path / "repeated.csv"
    frame = synapse_export()
    pd.concat([frame, frame.iloc[[0, 0]]]).to_csv(synapses, index=False)
    result = load(synapses, cells)
    assert sorted(result.synapses["id"]) == [1, 2, 3]
    assert result.provenance["repeated_synapse_rows_dropped"] == 2


def test_one_id_for_two_different_synapses_is_an_error(tmp_path, exports):
    _, cells = exports
    synapses = tmp_path / "clash.csv"
    frame = synapse_export()
    frame.loc[1, "id"] = 3
    frame.to_csv(synapses, index=False)
    with pytest.raises(DataError, match=r"clash\.csv.*id 3"):
        load(synapses, cells)


def test_missing_id_names_file_column_and_row(tmp_path, exports):
    _, cells = exports
    synapses = tmp_path / "gap.csv"
    frame = synapse_export().astype({"pre_root_id": object})
    frame.loc[2, "pre_root_id"] = None
    frame.to_csv(synapses, index=False)
    with pytest.raises(DataError, match=r"gap\.csv.*'pre_pt_root_id' row 2"):
        load(synapses, cells)


def test_missing_required_column_names_the_file(exports):
    synapses, cells = exports
    mapping = {k: v for k, v in SYNAPSE_MAP.items() if k != "ctr_z"}
    with pytest.raises(DataError, match=r"syn\.csv.*ctr_pt_position_z"):
        load(synapses, cells, columns={"synapses": mapping, "cell_types": {"root": "pt_root_id"}})


def test_mapping_a_column_the_file_lacks_is_an_error(exports):
    synapses, cells = exports
    with pytest.raises(DataError, match=r"syn\.csv.*'cleft'"):
        load(
            synapses,
            cells,
            columns={"synapses": {**SYNAPSE_MAP, "cleft": "size"}, "cell_types": {}},
        )


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("absent.csv", None, "no such file"),
        ("empty.csv", "", "empty"),
        ("header_only.csv", "id,pre_root_id\n", "no rows"),
        ("broken.parquet", "not parquet at all", "cannot be read as parquet"),
        ("table.xlsx", "whatever", "unsupported file type"),
    ],
)
def test_unusable_files_raise_data_error_naming_the_file(tmp_path, exports, name, content, match):
    _, cells = exports
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=match) as error:
        load(path, cells)
    assert name in str(error.value)


def test_bad_settings_name_the_key(exports):
    synapses, cells = exports
    with pytest.raises(DataError, match="position_resolution"):
        load(synapses, cells, position_resolution=[4, 4])
    with pytest.raises(DataError, match="dataset.files.columns"):
        load(synapses, cells, columns={"synapse": SYNAPSE_MAP})


def test_load_source_dispatches_to_files(exports):
    synapses, cells = exports
    dataset = {
        "source": "files",
        "files": {
            "synapses": str(synapses),
            "cell_types": str(cells),
            "em_path": "precomputed://file:///em",
            "position_resolution": [8, 8, 40],
            "columns": {"synapses": SYNAPSE_MAP, "cell_types": {"root": "pt_root_id"}},
        },
    }
    result = load_source(dataset, synthetic_dir="unused")
    assert len(result.synapses) == 3
    assert result.position_resolution == (8.0, 8.0, 40.0)
    # No default resolution: a config without one is refused, naming the key.
    del dataset["files"]["position_resolution"]
    with pytest.raises(DataError, match=r"dataset.files.position_resolution is not set"):
        load_source(dataset, synthetic_dir="unused")
