"""The ``files`` source: synapse and cell-type tables exported to CSV or parquet.

Exports rarely use CAVE's column names, so ``columns`` renames them first; after that the tables
are held to the same schema as every other source (:mod:`synapse_ei.tables`).
"""

from __future__ import annotations

import gzip
import hashlib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from shlex import quote
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
    segmentation_path: str | None = None,
) -> SourceTables:
    """Read a synapse and a cell-type export and return them in the shared schema.

    ``segmentation_path`` (optional) is the segmentation whose root ids the tables name, as a
    remote Neuroglancer source; it is recorded in the provenance for the viewer links, which
    then show each link's presynaptic neuron.

    ``columns`` maps export names to CAVE names per table, e.g.
    ``{"synapses": {"pre_root_id": "pre_pt_root_id"}, "cell_types": {}}``. Points packed in one
    column (CAVE's default ``ctr_pt_position`` holding ``[x, y, z]``) are split. Columns outside
    the schema are dropped; ids and positions become int64. Rows repeated verbatim (some exports
    list a synapse once per cell pair; an export appended twice repeats every row) are dropped
    and counted in the provenance; two different synapse rows sharing an id are an error, while
    two different cell-type rows of one root id stay for the label stage to drop (a multi-soma
    merge has no single class).
    """
    resolution = _check_resolution(position_resolution)
    renames = _check_columns_setting(columns)
    _check_segmentation_path(segmentation_path)
    synapses, cell_types = Path(synapses), Path(cell_types)
    synapse_frame, repeated = _synapse_table(synapses, renames["synapses"])
    cell_frame, repeated_cells = _cell_type_table(cell_types, renames["cell_types"])
    provenance: dict[str, Any] = {
        "source": "files",
        "synapses": str(synapses),
        "cell_types": str(cell_types),
        "em_path": em_path,
        "segmentation_path": segmentation_path,
        "rows": {"synapses": len(synapse_frame), "cell_types": len(cell_frame)},
        "repeated_synapse_rows_dropped": repeated,
        "repeated_cell_type_rows_dropped": repeated_cells,
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


def _check_segmentation_path(path: str | None) -> None:
    """A segmentation Neuroglancer can open from the link itself: a remote source. A local
    volume has no URL in a link (the EM's is served by ``viewer.local_url``; nothing serves a
    second one)."""
    if path is None:
        return
    from synapse_ei.viewer import is_local  # only here: the query needs no viewer otherwise

    if not isinstance(path, str) or is_local(path):
        raise DataError(
            f"dataset.files.segmentation_path: {path!r} is not a remote Neuroglancer source; "
            "give one such as 'precomputed://gs://bucket/seg' or "
            "'graphene://https://host/segmentation/table/name', or null for links without a "
            "segmentation."
        )


def _synapse_table(path: Path, renames: Mapping[str, str]) -> tuple[pd.DataFrame, int]:
    """The synapse export in the house schema, rows repeated verbatim dropped, and how many."""
    where = f"synapse table {path}"
    frame = tables.split_packed_positions(_read_table(path, renames), tables.SYNAPSE_POINTS, where)
    tables.require_columns(frame, tables.SYNAPSE_REQUIRED, where)
    keep = tables.present(frame, tables.SYNAPSE_COLUMNS)
    return _drop_repeated_synapses(tables.to_int64(frame[keep], keep, where), path)


def _cell_type_table(path: Path, renames: Mapping[str, str]) -> tuple[pd.DataFrame, int]:
    """The cell-type export in the house schema, rows repeated verbatim dropped, and how many."""
    where = f"cell-type table {path}"
    frame = _read_table(path, renames)
    # Repeats are judged on the whole export row: two somas of one root differ in their id and
    # position, which the schema below does not keep.
    repeated = frame.astype(str).duplicated()
    frame = frame[~repeated]
    tables.require_columns(frame, tables.CELL_TYPE_REQUIRED, where)
    keep = tables.present(frame, tables.CELL_TYPE_COLUMNS)
    frame = tables.to_int64(frame[keep], ["pt_root_id"], where)
    return frame.reset_index(drop=True), int(repeated.sum())


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
            _refuse_utf16(path)
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
    except UnicodeDecodeError as error:
        # Not a damaged export: Excel and older tools write Windows-1252 / Latin-1.
        byte = error.object[error.start : error.start + 1].hex()
        raise DataError(
            f"{path}: not UTF-8 text (byte 0x{byte}), the encoding the files source reads CSV in; "
            f"it is likely Latin-1 (Windows-1252). Convert it to UTF-8, e.g. "
            f"`{_iconv_command(path, 'WINDOWS-1252')}`, and point dataset.files at the new file."
        ) from error
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


def _refuse_utf16(path: Path) -> None:
    """Refuse UTF-16 text, which pandas would read as UTF-8 into garbled names without a BOM."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as stream:
            head = stream.read(1 << 16)
    except (OSError, EOFError):
        return  # pandas reports a damaged file in its own words
    # ASCII text in UTF-16 without a mark has a NUL high byte in every pair, after (LE) or
    # before (BE) each character; a stray NUL in UTF-8 text is no reason to say UTF-16.
    pairs = len(head) // 2
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        encoding = "UTF-16"  # iconv reads the byte order from the mark
    elif pairs and head[1 : 2 * pairs : 2].count(0) >= 0.9 * pairs:
        encoding = "UTF-16LE"
    elif pairs and head[0 : 2 * pairs : 2].count(0) >= 0.9 * pairs:
        encoding = "UTF-16BE"
    else:
        return
    raise DataError(
        f"{path}: UTF-16 text (a UTF-16 byte-order mark, or NUL bytes between the characters), "
        f"but the files source reads CSV as UTF-8. Convert it, e.g. "
        f"`{_iconv_command(path, encoding)}`, and point dataset.files at the new file."
    )


def _iconv_command(path: Path, encoding: str) -> str:
    """A shell command that writes a UTF-8 copy of ``path`` beside it."""
    if path.name.lower().endswith(".gz"):
        target = path.with_name(path.name[: -len(".csv.gz")] + ".utf8.csv.gz")
        return (
            f"gunzip -c {quote(str(path))} | iconv -f {encoding} -t UTF-8 | gzip > "
            f"{quote(str(target))}"
        )
    target = path.with_name(path.name[: -len(".csv")] + ".utf8.csv")
    return f"iconv -f {encoding} -t UTF-8 {quote(str(path))} > {quote(str(target))}"


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
