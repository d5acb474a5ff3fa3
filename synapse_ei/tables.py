"""The table schemas every stage shares, and the checks that keep them honest.

Synapse tables follow CAVE's ``synapses_pni_2`` with ``split_positions=True``; cell-type tables
follow ``aibs_metamodel_celltypes_v661``. Positions stay in the table's own voxel resolution
(CAVE's default is 4x4x40 nm) until
:func:`synapse_ei.cutout.geometry.table_to_volume_voxels` converts them for a given volume and
mip. Root ids are int64, never float.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from synapse_ei import config
from synapse_ei.errors import DataError

EXCITATORY = "excitatory"
INHIBITORY = "inhibitory"
LABELS = (EXCITATORY, INHIBITORY)
#: Integer class index used only inside the model code (inhibitory is the positive class).
LABEL_INDEX = {EXCITATORY: 0, INHIBITORY: 1}

#: The splits, in order; defined with the config checks, which the Snakefile imports.
SPLITS = config.SPLITS

#: Resolution (nm per voxel, XYZ) of CAVE positions unless a source says otherwise.
CAVE_POSITION_RESOLUTION = (4.0, 4.0, 40.0)

CTR = [f"ctr_pt_position_{axis}" for axis in "xyz"]
PRE_POSITION = [f"pre_pt_position_{axis}" for axis in "xyz"]
POST_POSITION = [f"post_pt_position_{axis}" for axis in "xyz"]
#: The presynaptic and postsynaptic root id columns of a synapse table.
PRE_ROOT, POST_ROOT = "pre_pt_root_id", "post_pt_root_id"
#: The points of a synapse table that CAVE packs into one ``[x, y, z]`` column by default.
SYNAPSE_POINTS = ("ctr_pt_position", "pre_pt_position", "post_pt_position")

#: Columns every synapse table must have, whatever its source.
SYNAPSE_REQUIRED = ["id", "pre_pt_root_id", "post_pt_root_id", *CTR]
#: Columns a synapse table may have; missing ones are tolerated (real exports often lack them).
SYNAPSE_OPTIONAL = [*PRE_POSITION, *POST_POSITION, "size"]
#: The id columns of a synapse table, read as int64.
SYNAPSE_ID_COLUMNS = ["id", "pre_pt_root_id", "post_pt_root_id"]

CELL_TYPE_REQUIRED = ["pt_root_id", "cell_type"]
CELL_TYPE_OPTIONAL = ["classification_system"]
#: Every column of the house schema, in its order: a source keeps these and drops the rest.
SYNAPSE_COLUMNS = [*SYNAPSE_REQUIRED, *SYNAPSE_OPTIONAL]
CELL_TYPE_COLUMNS = [*CELL_TYPE_REQUIRED, *CELL_TYPE_OPTIONAL]

#: Columns of a predictions table: what inference returns and evaluation reads.
PREDICTION_COLUMNS = ["id", "pre_pt_root_id", "split", "label", "prob_inhibitory"]


def present(frame: pd.DataFrame, columns: Iterable[str]) -> list[str]:
    """Those of ``columns`` that ``frame`` has, in the order of ``columns``."""
    return [column for column in columns if column in frame.columns]


def require_columns(frame: pd.DataFrame, columns: Iterable[str], where: str) -> None:
    """Raise a :class:`DataError` naming every missing column and the file it is missing from."""
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise DataError(
            f"{where}: missing required column(s) {missing}; it has {list(frame.columns)}. "
            "Rename the columns in the export, or map them with the source's `columns` setting."
        )


def to_int64(frame: pd.DataFrame, columns: Sequence[str], where: str) -> pd.DataFrame:
    """Convert id/position columns to int64, naming the first bad row if that is impossible.

    Pandas reads an integer column with a missing value as float, which silently rounds 18-digit
    root ids; we refuse missing values here instead of carrying floats along.
    """
    frame = frame.copy()
    for column in columns:
        if column not in frame.columns:
            continue
        values = frame[column]
        numeric = pd.to_numeric(values, errors="coerce")
        bad = numeric.isna()
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            raise DataError(
                f"{where}: column '{column}' row {row} holds {values.iloc[row]!r}, not an integer "
                f"({int(bad.sum())} such row(s)). Fix or drop those rows in the export."
            )
        if pd.api.types.is_float_dtype(numeric):
            if not (numeric == numeric.round()).all():
                row = int((numeric != numeric.round()).to_numpy().nonzero()[0][0])
                raise DataError(
                    f"{where}: column '{column}' row {row} holds {values.iloc[row]!r}, "
                    "which is not a whole number."
                )
            # Beyond int64 a cast wraps round silently (1e19 became -9223372036854775808).
            if not numeric.abs().lt(2.0**63).all():
                row = int((numeric.abs() >= 2.0**63).to_numpy().nonzero()[0][0])
                raise DataError(
                    f"{where}: column '{column}' row {row} holds {values.iloc[row]!r}, beyond "
                    "the range of a 64-bit integer. Fix or drop those rows in the export."
                )
            if column.endswith("root_id") or column == "id":
                # Floats above 2**53 have already lost digits: the id is not recoverable.
                if (numeric.abs() > 2**53).any():
                    raise DataError(
                        f"{where}: column '{column}' was stored as floating point and its ids "
                        "exceed 2**53, so digits are lost. Export ids as integers or strings."
                    )
        frame[column] = numeric.astype("int64")
    return frame


def require_ids_in(
    frame: pd.DataFrame, ids: Iterable[int], where: str, other: str, fix: str
) -> None:
    """Raise a :class:`DataError` naming the first row of ``frame`` (``where``) whose synapse
    ``id`` is not among ``ids``, the ids of ``other``, and how many such rows there are;
    ``fix`` says what to do (two tables of one run that disagree: usually a stage to rerun)."""
    missing = ~frame["id"].isin(ids)
    if missing.any():
        row = int(missing.to_numpy().nonzero()[0][0])
        raise DataError(
            f"{where}: synapse id {int(frame['id'].iloc[row])} (row {row}) is not in the "
            f"{other} ({int(missing.sum())} such row(s)). {fix}"
        )


def require_values_in(
    frame: pd.DataFrame, column: str, allowed: Iterable[str], where: str, fix: str
) -> None:
    """Raise a :class:`DataError` naming the first row of ``frame`` (``where``) whose ``column``
    holds a value not in ``allowed``, and ``fix``, what to do about it."""
    allowed = list(allowed)
    bad = ~frame[column].isin(allowed)
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        raise DataError(
            f"{where}: column '{column}' row {row} holds {frame[column].iloc[row]!r}; "
            f"{column}s must be one of {allowed}. {fix}"
        )

#: ``[x y z]`` or ``[x, y, z]``, as numpy prints an array or a list prints, runs of blanks allowed.
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_PACKED_POINT = (
    r"^\s*\[\s*"
    + r"(?:\s*,\s*|\s+)".join(rf"(?P<{axis}>{_NUMBER})" for axis in "xyz")
    + r"\s*\]\s*$"
)


def split_packed_positions(frame: pd.DataFrame, points: Iterable[str], where: str) -> pd.DataFrame:
    """Split each packed point column ``{point}`` into ``{point}_x``, ``_y``, ``_z``.

    CAVE's ``query_table`` returns a point as one column holding ``[x, y, z]`` unless asked for
    ``split_positions=True``: parquet keeps it as a list, CSV as the text ``[x y z]`` or
    ``[x, y, z]`` (numpy's print, so runs of spaces or a line break may separate the numbers).
    A point already split, or absent, is left alone; the parts come out as numbers for
    :func:`to_int64`. A cell that is not three numbers is a :class:`DataError`.
    """
    for point in points:
        split = [f"{point}_{axis}" for axis in "xyz"]
        if point not in frame.columns or any(column in frame.columns for column in split):
            continue
        values = frame[point].reset_index(drop=True)
        text = values.astype(object).where(values.map(lambda v: isinstance(v, str)), None)
        # pyarrow's regex runs in C++: the whole split is 5x faster than with pandas' str.extract
        # (1.9 s against 10 s for a million rows).
        found = pc.extract_regex(pa.array(text.to_numpy(), type=pa.string()), _PACKED_POINT)
        columns = pd.DataFrame(
            {
                axis: pc.cast(pc.struct_field(found, axis), pa.float64()).to_numpy(
                    zero_copy_only=False
                )
                for axis in "xyz"
            }
        )
        is_list = values.map(
            lambda v: isinstance(v, (list, tuple, np.ndarray)) and np.shape(v) == (3,)
        )
        if is_list.any():
            listed = pd.DataFrame(np.vstack(values[is_list].to_numpy()))
            columns.loc[is_list] = listed.apply(pd.to_numeric, errors="coerce").to_numpy()
        columns.columns = split
        bad = columns.isna().any(axis=1)
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            raise DataError(
                f"{where}: column '{point}' row {row} holds {values.iloc[row]!r}, not a point "
                f"[x, y, z] of three numbers ({int(bad.sum())} such row(s)). Fix or drop those "
                "rows in the export, or export the table with split_positions=True."
            )
        columns.index = frame.index
        frame = pd.concat([frame.drop(columns=point), columns], axis=1)
    return frame
