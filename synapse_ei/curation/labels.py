"""E/I label of each synapse, taken from the class of its presynaptic cell.

A synapse is dropped for the first reason that applies, so the counts add up to what went in:
``pre_root_id_zero`` (no segment), ``no_cell_type`` (the presynaptic cell has no cell-type row),
``duplicate_cell_type`` (its root id has several different rows: a multi-soma merge, so no single
class; rows repeated verbatim were already dropped by the source),
``not_mapped`` (its class is not in ``classes``, e.g. glia), then ``autapse`` (pre == post, a
segmentation merge rather than biology). An optional cap per class (``class_cap``) keeps a
seeded random sample of each class, so a huge majority class does not swamp a run.

Class values are compared as the config writes them: a numeric code column (``1``, ``2``; a
float column when pandas had missing values to hold) matches the keys ``1`` and ``2``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from synapse_ei import tables
from synapse_ei.curation.sampling import cap_per_group, check_cap, shuffle_keys
from synapse_ei.errors import DataError
from synapse_ei.outputs import read_json, write_json, write_parquet

DROP_REASONS = ("pre_root_id_zero", "no_cell_type", "duplicate_cell_type", "not_mapped", "autapse")
MISSING_VALUE = "<missing>"
CAP_KEY = "labels.max_synapses_per_class"


def label_synapses(
    synapses: pd.DataFrame,
    cell_types: pd.DataFrame,
    column: str,
    classes: Mapping[str, str],
    max_synapses_per_class: int | None = None,
    seed: int = 0,
    repeated_cell_type_rows: int = 0,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Label each synapse excitatory/inhibitory by its presynaptic cell's ``column`` value.

    ``classes`` maps values of ``cell_types[column]`` to 'excitatory' / 'inhibitory'. Returns the
    labelled synapses (all input columns plus ``label`` and ``pre_cell_type``, sorted by id) and
    a stats dict of counts in, out and dropped by reason. With ``max_synapses_per_class``, each
    class keeps at most that many synapses, a random sample fixed by ``seed``.
    ``repeated_cell_type_rows`` (the verbatim repeats the source dropped) goes into the stats.
    """
    synapses, cell_types = _checked_tables(synapses, cell_types, column, classes,
                                           max_synapses_per_class)  # fmt: skip
    rows_per_root = cell_types["pt_root_id"].value_counts()
    unique = (cell_types["pt_root_id"].map(rows_per_root) == 1).to_numpy()
    by_root = cell_types.set_index("pt_root_id")
    # Codes of the whole column, so that every row reads as the same kind (numbers or text).
    class_value = class_codes(by_root[column])[unique]
    cell_type_name = class_codes(by_root["cell_type"])[unique]
    numeric = _as_numbers(cell_types[column]) is not None

    value = synapses["pre_pt_root_id"].map(class_value)
    label = value.map(_config_codes(classes, numeric))
    remaining, drops = _drop_reasons(synapses, label, rows_per_root)

    labelled = synapses[remaining].assign(label=label[remaining].astype(str))
    pre_cell_type = labelled["pre_pt_root_id"].map(cell_type_name).astype(object)
    labelled["pre_cell_type"] = pre_cell_type.fillna(MISSING_VALUE).astype(str)
    labelled = labelled.sort_values("id", kind="stable").reset_index(drop=True)
    n_labelled = len(labelled)
    if max_synapses_per_class is not None:
        labelled = cap_per_group(
            labelled, "label", max_synapses_per_class, shuffle_keys(len(labelled), seed), CAP_KEY
        )

    not_mapped_values = (
        value[drops["not_mapped"]].astype(object).fillna(MISSING_VALUE).astype(str).value_counts()
    )
    stats = {
        "synapses_in": len(synapses),
        "labelled": len(labelled),
        "column": column,
        "classes": dict(classes),
        "dropped": {reason: int(mask.sum()) for reason, mask in drops.items()},
        "repeated_cell_type_rows_dropped": int(repeated_cell_type_rows),
        "duplicated_root_ids": int((rows_per_root > 1).sum()),
        "max_synapses_per_class": max_synapses_per_class,
        "not_mapped_values": {str(k): int(v) for k, v in not_mapped_values.items()},
        **_counts_by_label(labelled),
    }
    if max_synapses_per_class is not None:
        stats["dropped"]["class_cap"] = int(n_labelled - len(labelled))
    _check_both_classes(stats)
    return labelled, stats


def run_label(
    synapses_path: str | Path,
    cell_types_path: str | Path,
    provenance_path: str | Path,
    labelled_path: str | Path,
    stats_path: str | Path,
    column: str,
    classes: Mapping[str, str],
    max_synapses_per_class: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The label stage: :func:`label_synapses` on the query's tables; writes the labelled
    synapses and their stats, and returns the stats."""
    labelled, stats = label_synapses(
        pd.read_parquet(synapses_path),
        pd.read_parquet(cell_types_path),
        column=column,
        classes=classes,
        max_synapses_per_class=max_synapses_per_class,
        seed=seed,
        # Only the files source drops verbatim repeats of cell-type rows (an export appended
        # twice).
        repeated_cell_type_rows=read_json(provenance_path).get(
            "repeated_cell_type_rows_dropped", 0
        ),
    )
    write_parquet(labelled_path, labelled)
    write_json(stats_path, stats)
    return stats


def _checked_tables(
    synapses: pd.DataFrame,
    cell_types: pd.DataFrame,
    column: str,
    classes: Mapping[str, str],
    max_synapses_per_class: int | None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The settings checked, and both tables with int64 ids, unique synapse ids and the columns
    the labelling reads; else a :class:`DataError` naming the key, table or id."""
    _check_classes(classes)
    check_cap(max_synapses_per_class, CAP_KEY)
    tables.require_columns(synapses, ["id", "pre_pt_root_id", "post_pt_root_id"], "synapse table")
    tables.require_columns(cell_types, tables.CELL_TYPE_REQUIRED, "cell-type table")
    if column not in cell_types.columns:
        raise DataError(
            f"labels.column: the cell-type table has no column {column!r}; it has "
            f"{list(cell_types.columns)}. Set labels.column to one of them."
        )
    synapses = tables.to_int64(synapses, tables.SYNAPSE_ID_COLUMNS, "synapse table")
    cell_types = tables.to_int64(cell_types, ["pt_root_id"], "cell-type table")
    repeated = synapses["id"].duplicated()
    if repeated.any():
        raise DataError(
            f"synapse table: id {int(synapses['id'][repeated].iloc[0])} appears more than once "
            f"({int(repeated.sum())} repeated id(s)); synapse ids must be unique."
        )
    return synapses, cell_types


def _drop_reasons(
    synapses: pd.DataFrame, label: pd.Series, rows_per_root: pd.Series
) -> tuple[pd.Series, dict[str, pd.Series]]:
    """The synapses kept, and for each of :data:`DROP_REASONS` those it drops: each mask
    excludes everything an earlier reason took, so every synapse has one reason."""
    pre = synapses["pre_pt_root_id"]
    n_rows = pre.map(rows_per_root).fillna(0)
    remaining = pd.Series(True, index=synapses.index)
    drops: dict[str, pd.Series] = {}
    for reason, hit in (
        ("pre_root_id_zero", pre == 0),
        ("no_cell_type", n_rows == 0),
        ("duplicate_cell_type", n_rows > 1),
        ("not_mapped", label.isna()),
        ("autapse", pre == synapses["post_pt_root_id"]),
    ):
        drops[reason] = remaining & hit
        remaining &= ~hit
    return remaining, drops


def _counts_by_label(labelled: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Synapses and presynaptic neurons per label, for the stats."""
    return {
        "by_label": {name: int((labelled["label"] == name).sum()) for name in tables.LABELS},
        "neurons_by_label": {
            name: int(labelled.loc[labelled["label"] == name, "pre_pt_root_id"].nunique())
            for name in tables.LABELS
        },
    }


def class_codes(values: pd.Series) -> pd.Series:
    """Cell-type values as text the way a config writes them; missing values stay missing.

    Parquet keeps numeric codes as numbers, floats once a value is missing, and a CSV written
    from such a column holds ``1.0``: whole numbers are written without the ``.0`` so that the
    key ``1`` matches. A column that is not all numbers is left as its text.
    """
    numbers = _as_numbers(values)
    if numbers is None:
        return values.astype(object).where(values.isna(), values.astype(str))
    return numbers.astype(object).map(_number_text, na_action="ignore")


def _as_numbers(values: pd.Series) -> pd.Series | None:
    """``values`` as floats if every present one is a number (not a bool), else None."""
    if pd.api.types.is_bool_dtype(values):
        return None
    if pd.api.types.is_numeric_dtype(values):
        return values.astype("float64")
    numbers = pd.to_numeric(values, errors="coerce")
    return numbers if (numbers.notna() == values.notna()).all() else None


def _number_text(value: float) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def _config_codes(classes: Mapping[Any, str], numeric: bool) -> dict[str, str]:
    """``labels.classes`` with its keys as :func:`class_codes` writes the column's values.

    YAML reads ``1:`` as a number, the Snakefile's canonical config as the text ``'1'``; against a
    numeric column ``1``, ``'1'`` and ``'1.0'`` are all the code 1.
    """
    codes = {}
    for key, target in classes.items():
        number = _as_numbers(pd.Series([key], dtype=object)) if numeric else None
        codes[_number_text(number.iloc[0]) if number is not None else str(key)] = target
    return codes


def _check_classes(classes: Mapping[str, str]) -> None:
    if not isinstance(classes, Mapping) or not classes:
        raise DataError(
            f"labels.classes: {classes!r} is not a non-empty map from cell-type values to "
            f"{list(tables.LABELS)}."
        )
    for key, target in classes.items():
        if target not in tables.LABELS:
            raise DataError(
                f"labels.classes.{key}: {target!r} is not a label; use one of "
                f"{list(tables.LABELS)}."
            )


def _check_both_classes(stats: dict[str, Any]) -> None:
    dropped = stats["dropped"]
    hints = []
    duplicates = dropped["duplicate_cell_type"]
    if duplicates and duplicates >= dropped["not_mapped"]:
        # Root ids with several different cell-type rows took more synapses than the class
        # mapping: pointing only at labels.classes would send the user the wrong way.
        hints.append(
            f"{duplicates} synapse(s) were dropped because their presynaptic cell has duplicated "
            f"root ids: {stats['duplicated_root_ids']} root id(s) have several different rows in "
            "the cell-type table (a multi-soma merge has no single class). Check the cell-type "
            "export: rows repeated verbatim are dropped, but an export appended twice with a "
            "different id or position per row is not."
        )
    if dropped["not_mapped"] or not hints:
        hints.append(
            f"Check labels.column ({stats['column']!r}) and labels.classes ({stats['classes']}) "
            f"against the cell-type table; values not mapped: {stats['not_mapped_values']}."
        )
    hint = " ".join([*hints, f"Dropped: {dropped}."])
    if stats["labelled"] == 0:
        raise DataError(f"No synapse could be labelled ({stats['synapses_in']} in). {hint}")
    absent = [name for name, count in stats["by_label"].items() if count == 0]
    if absent:
        raise DataError(
            f"Only one class was labelled: no {absent[0]} synapse among {stats['labelled']} "
            f"labelled. A classifier needs both. {hint}"
        )
