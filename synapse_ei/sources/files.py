"""The ``files`` source: synapse and cell-type tables exported to CSV or parquet.

Exports rarely use CAVE's column names, so ``columns`` renames them first; after that the tables
are held to the same schema as every other source (:mod:`synapse_ei.tables`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from synapse_ei import tables
from synapse_ei.errors import DataError
from synapse_ei.sources import SourceTables

CSV_SUFFIXES = (".csv", ".csv.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")
TABLE_KINDS = ("synapses", "cell_types")


def load(
    synapses: str | Path,
    cell_types: str | Path,
    em_path: str,
    position_resolution: Sequence[float] = (4, 4, 40),
    columns: Mapping[str, Mapping[str, str]] | None = None,
) -> SourceTables:
    """Read a synapse and a cell-type export and return them in the shared schema.

    ``columns`` maps export names to CAVE names per table, e.g.
    ``{"synapses": {"pre_root_id": "pre_pt_root_id"}, "cell_types": {}}``. Columns outside the
    schema are dropped; ids and positions become int64. Synapse rows repeated verbatim (some
    exports list a synapse once per cell pair) are dropped and counted in the provenance; two
    different rows sharing an id are an error.
    """
    resolution = _check_resolution(position_resolution)
    renames = _check_columns_setting(columns)
    synapses, cell_types = Path(synapses), Path(cell_types)

    synapse_frame = _read_table(synapses, renames["synapses"])
    tables.require_columns(synapse_frame, tables.SYNAPSE_REQUIRED, f"synapse table {synapses}")
    keep = [c for c in [*tables.SYNAPSE_REQUIRED, *tables.SYNAPSE_OPTIONAL] if c in synapse_frame]
    synapse_frame = tables.to_int64(synapse_frame[keep], keep, f"synapse table {synapses}")
    synapse_frame, repeated = _drop_repeated_synapses(synapse_frame, synapses)

    cell_frame = _read_table(cell_types, renames["cell_types"])
    tables.require_columns(cell_frame, tables.CELL_TYPE_REQUIRED, f"cell-type table {cell_types}")
    keep = [c for c in [*tables.CELL_TYPE_REQUIRED, *tables.CELL_TYPE_OPTIONAL] if c in cell_frame]
    cell_frame = tables.to_int64(cell_frame[keep], ["pt_root_id"], f"cell-type table {cell_types}")
    cell_frame = cell_frame.reset_index(drop=True)

    provenance: dict[str, Any] = {
        "source": "files",
        "synapses": str(synapses),
        "cell_types": str(cell_types),
        "em_path": em_path,
        "rows": {"synapses": len(synapse_frame), "cell_types": len(cell_frame)},
        "repeated_synapse_rows_dropped": repeated,
        "sha256": {"synapses": _sha256(synapses), "cell_types": _sha256(cell_types)},
        "columns": {kind: dict(renames[kind]) for kind in TABLE_KINDS},
    }
    return SourceTables(
        synapses=synapse_frame,
        cell_types=cell_frame,
        em_path=str(em_path),
        position_resolution=resolution,
        provenance=provenance,
    )


def _check_resolution(position_resolution: Sequence[float]) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in position_resolution)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise DataError(
            f"dataset.files.position_resolution: {position_resolution!r} is not three positive "
            "numbers; give nm per voxel in XYZ, e.g. [4, 4, 40] for CAVE tables."
        )
    return values  # type: ignore[return-value]


def _check_columns_setting(
    columns: Mapping[str, Mapping[str, str]] | None,
) -> dict[str, dict[str, str]]:
    columns = columns or {}
    unknown = sorted(set(columns) - set(TABLE_KINDS))
    if unknown:
        raise DataError(
            f"dataset.files.columns: unknown table(s) {unknown}; use 'synapses' and/or "
            "'cell_types', each a map {export_name: cave_name}."
        )
    renames = {}
    for kind in TABLE_KINDS:
        mapping = columns.get(kind) or {}
        if not isinstance(mapping, Mapping):
            raise DataError(
                f"dataset.files.columns.{kind}: {mapping!r} is not a map "
                "{export_name: cave_name}."
            )
        renames[kind] = {str(k): str(v) for k, v in mapping.items()}
    return renames


def _read_table(path: Path, renames: Mapping[str, str]) -> pd.DataFrame:
    """Read one export by its suffix and apply the renames; every failure names the file."""
    name = path.name.lower()
    if not path.is_file():
        raise DataError(f"{path}: no such file; check the path in dataset.files.")
    try:
        if name.endswith(CSV_SUFFIXES):
            # Strings first: pandas would read an id column with a gap as float and round
            # 18-digit root ids before we could notice; tables.to_int64 converts exactly.
            frame = pd.read_csv(path, dtype=str)
        elif name.endswith(PARQUET_SUFFIXES):
            frame = pd.read_parquet(path)
        else:
            raise DataError(
                f"{path}: unsupported file type; export the table as .csv, .csv.gz or .parquet."
            )
    except DataError:
        raise
    except pd.errors.EmptyDataError as error:
        raise DataError(f"{path}: the file is empty; export the table again.") from error
    except Exception as error:  # parser, pyarrow and decoding errors all mean the same to a user
        raise DataError(
            f"{path}: cannot be read as {'parquet' if name.endswith(PARQUET_SUFFIXES) else 'CSV'} "
            f"({type(error).__name__}: {error}); check the file is a complete export."
        ) from error
    if frame.empty:
        raise DataError(f"{path}: the table has no rows; export the table again.")

    absent = sorted(set(renames) - set(frame.columns))
    if absent:
        raise DataError(
            f"{path}: dataset.files.columns maps {absent}, which the file does not have; "
            f"it has {list(frame.columns)}."
        )
    frame = frame.rename(columns=dict(renames))
    clashes = sorted({c for c in frame.columns if list(frame.columns).count(c) > 1})
    if clashes:
        raise DataError(
            f"{path}: after renaming with dataset.files.columns, column(s) {clashes} appear more "
            "than once; map only one export column onto each name."
        )
    return frame


def _drop_repeated_synapses(frame: pd.DataFrame, path: Path) -> tuple[pd.DataFrame, int]:
    """Drop verbatim repeats of a synapse row; refuse an id shared by two different synapses."""
    repeated = frame.duplicated()
    frame = frame[~repeated]
    clash = frame["id"].duplicated()
    if clash.any():
        synapse_id = int(frame["id"][clash].iloc[0])
        rows = frame.index[frame["id"] == synapse_id].tolist()
        raise DataError(
            f"synapse table {path}: id {synapse_id} labels different synapses (rows {rows}; "
            f"{int(clash.sum())} such id(s)). Synapse ids must be unique: fix the export or map "
            "another unique column onto 'id'."
        )
    return frame.reset_index(drop=True), int(repeated.sum())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
