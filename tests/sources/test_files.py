"""The files source: exports on disk become the shared schema, or a DataError naming the file."""

from __future__ import annotations

import hashlib
import subprocess
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


@pytest.mark.parametrize("path", ["/data/seg", "precomputed://file:///data/seg", "file:///seg"])
def test_a_local_segmentation_path_is_refused_naming_the_key(exports, path):
    synapses, cells = exports
    with pytest.raises(DataError, match=r"dataset.files.segmentation_path: .* not a remote"):
        load(synapses, cells, segmentation_path=path)


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
    assert result.provenance["segmentation_path"] is None
    dataset["files"]["segmentation_path"] = "precomputed://gs://bucket/seg"
    seg = load_source(dataset, synthetic_dir="unused").provenance["segmentation_path"]
    assert seg == "precomputed://gs://bucket/seg"
    # No default resolution: a config without one is refused, naming the key.
    del dataset["files"]["position_resolution"]
    with pytest.raises(DataError, match=r"dataset.files.position_resolution is not set"):
        load_source(dataset, synthetic_dir="unused")


# ------------------------------------------------------------------ CAVE's packed positions


CELLS_ONLY = {"cell_types": {"root": "pt_root_id"}}


def packed_export() -> pd.DataFrame:
    """The synapse export with CAVE names and every point packed as query_table returns it."""
    frame = synapse_export().rename(columns=SYNAPSE_MAP)
    centres = frame[tables.CTR].to_numpy().tolist()
    for point, offset in (("ctr", 0), ("pre", -1), ("post", 1)):
        frame[f"{point}_pt_position"] = [[x + offset, y, z] for x, y, z in centres]
    return frame.drop(columns=tables.CTR)


def split_expected() -> pd.DataFrame:
    frame = synapse_export().rename(columns=SYNAPSE_MAP)
    for point, offset in (("pre", -1), ("post", 1)):
        for axis in "xyz":
            shift = offset if axis == "x" else 0
            frame[f"{point}_pt_position_{axis}"] = frame[f"ctr_pt_position_{axis}"] + shift
    return frame[[*tables.SYNAPSE_REQUIRED, *tables.SYNAPSE_OPTIONAL]]


def test_packed_positions_in_parquet_lists_are_split(tmp_path, exports):
    _, cells = exports
    synapses = tmp_path / "packed.parquet"
    packed_export().to_parquet(synapses)
    result = files.load(synapses, cells, em_path="x", columns=CELLS_ONLY)
    pd.testing.assert_frame_equal(result.synapses, split_expected())


@pytest.mark.parametrize(
    "write",
    [
        lambda p: f"[{p[0]} {p[1]} {p[2]}]",  # numpy's print of an array
        lambda p: f"[{p[0]}, {p[1]}, {p[2]}]",  # a list's
        lambda p: f"[ {p[0]}.0  {p[1]}.\n {p[2]}.0 ]",  # numpy floats, padded and wrapped
    ],
    ids=["numpy", "list", "numpy-floats-wrapped"],
)
def test_packed_positions_as_csv_text_are_split(tmp_path, exports, write):
    _, cells = exports
    frame = packed_export()
    for point in tables.SYNAPSE_POINTS:
        frame[point] = frame[point].map(write)
    synapses = tmp_path / "packed.csv"
    frame.to_csv(synapses, index=False)
    result = files.load(synapses, cells, em_path="x", columns=CELLS_ONLY)
    pd.testing.assert_frame_equal(result.synapses, split_expected())


@pytest.mark.parametrize("cell", ["[200 20]", "200 20 2", "[200 20 two]", ""])
def test_a_malformed_packed_point_names_file_column_and_row(tmp_path, exports, cell):
    _, cells = exports
    frame = packed_export()
    for point in tables.SYNAPSE_POINTS:
        frame[point] = frame[point].map(lambda p: f"[{p[0]} {p[1]} {p[2]}]")
    frame.loc[1, "post_pt_position"] = cell
    synapses = tmp_path / "packed.csv"
    frame.to_csv(synapses, index=False)
    with pytest.raises(DataError, match=r"packed\.csv: column 'post_pt_position' row 1 holds"):
        files.load(synapses, cells, em_path="x", columns=CELLS_ONLY)


def test_real_split_positions_packed_again_load_the_same(tmp_path, realdata):
    """minnie65's CAVE export, packed as query_table's default returns it: the same table."""
    folder = realdata / "minnie65_v1718"
    split = files.load(folder / "synapses.csv", folder / "cell_types.csv", em_path="x")
    raw = pd.read_csv(folder / "synapses.csv", dtype=str)
    position = [f"ctr_pt_position_{axis}" for axis in "xyz"]
    as_text = raw.drop(columns=position).assign(
        ctr_pt_position=["[" + " ".join(p) + "]" for p in raw[position].to_numpy()]
    )
    as_text.to_csv(tmp_path / "packed.csv", index=False)
    as_list = raw.drop(columns=position).astype("int64")
    as_list["ctr_pt_position"] = list(raw[position].astype("int64").to_numpy())
    as_list.to_parquet(tmp_path / "packed.parquet")
    for path in (tmp_path / "packed.csv", tmp_path / "packed.parquet"):
        packed = files.load(path, folder / "cell_types.csv", em_path="x")
        pd.testing.assert_frame_equal(packed.synapses, split.synapses)


# ---------------------------------------------------------------- repeated cell-type rows


def test_cell_type_rows_repeated_verbatim_are_dropped_and_counted(tmp_path, exports):
    synapses, _ = exports
    cells = tmp_path / "twice.csv"
    pd.concat([cell_export(), cell_export()]).to_csv(cells, index=False)
    result = load(synapses, cells)
    assert result.cell_types["pt_root_id"].tolist() == [BIG_ROOT, BIG_ROOT + 1]
    assert result.provenance["repeated_cell_type_rows_dropped"] == 2


def test_cell_type_rows_that_differ_are_kept_for_the_label_stage(tmp_path, exports):
    """Two somas of one root (a merge) differ in position: not a repeat, though the schema drops
    the position."""
    synapses, _ = exports
    cells = tmp_path / "merge.csv"
    frame = cell_export()
    pd.concat([frame, frame.iloc[[0]].assign(pt_position="[7 8 9]")]).to_csv(cells, index=False)
    result = load(synapses, cells)
    assert result.cell_types["pt_root_id"].tolist() == [BIG_ROOT, BIG_ROOT + 1, BIG_ROOT]
    assert result.provenance["repeated_cell_type_rows_dropped"] == 0


# ------------------------------------------------------------------------------ encodings


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
@pytest.mark.parametrize(
    ("encoding", "expected"),
    [("latin-1", "WINDOWS-1252"), ("cp1252", "WINDOWS-1252"), ("utf-16", "UTF-16"),
     ("utf-16-le", "UTF-16LE"), ("utf-16-be", "UTF-16BE")],
)
def test_a_csv_not_in_utf8_is_named_an_encoding_problem_with_the_fix(
    tmp_path, exports, encoding, expected, suffix
):
    synapses, _ = exports
    cells = tmp_path / f"cell types{suffix}"  # a blank, which the command must quote
    cell_export().assign(cell_type=["pyramidal", "cellule étoilée"]).to_csv(
        cells, index=False, encoding=encoding
    )
    with pytest.raises(DataError) as error:
        load(synapses, cells)
    said = str(error.value)
    assert said.startswith(str(cells)) and "complete export" not in said
    assert "not UTF-8" in said or "UTF-16 text" in said
    command = said.split("`")[1]
    assert f"iconv -f {expected} -t UTF-8" in command
    # The command given works: its output, beside the export, loads.
    subprocess.run(command, shell=True, check=True)
    fixed = load(synapses, tmp_path / f"cell types.utf8{suffix}")
    assert fixed.cell_types["cell_type"].tolist() == ["pyramidal", "cellule étoilée"]


def test_a_number_beyond_int64_names_its_row_instead_of_wrapping(tmp_path, exports):
    _, cells = exports
    frame = packed_export()
    frame["ctr_pt_position"] = ["[100 10 1]", "[1e19 20 2]", "[300 30 3]"]
    synapses = tmp_path / "huge.csv"
    frame.to_csv(synapses, index=False)
    with pytest.raises(DataError, match=r"huge\.csv: column 'ctr_pt_position_x' row 1 .*64-bit"):
        files.load(synapses, cells, em_path="x", columns=CELLS_ONLY)


def test_a_stray_nul_in_utf8_text_is_not_called_utf16(tmp_path, exports):
    synapses, _ = exports
    cells = tmp_path / "cells.csv"
    cells.write_text(f"pt_root_id,cell_type\n{BIG_ROOT},e\x00\n{BIG_ROOT + 1},i\n")
    result = load(synapses, cells, columns={"synapses": SYNAPSE_MAP})
    assert result.cell_types["pt_root_id"].tolist() == [BIG_ROOT, BIG_ROOT + 1]
