"""Connectivity-only baseline: how far the tables alone go, without any image.

Features describe the synapse and its postsynaptic partner, never the presynaptic neuron: its
id, type or the labels of its other synapses would hand the model the answer, since every
synapse of a neuron shares that neuron's label. The one statistic that touches the presynaptic
side, the size of the pre->post connection, is a property of the connection, not of the neuron.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import sklearn
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score, log_loss
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from synapse_ei.errors import DataError
from synapse_ei.outputs import atomic_path, write_text
from synapse_ei.tables import (
    CELL_TYPE_REQUIRED,
    EXCITATORY,
    INHIBITORY,
    LABEL_INDEX,
    LABELS,
    require_columns,
    require_ids_in,
    require_values_in,
    SPLITS,
    SYNAPSE_ID_COLUMNS,
    SYNAPSE_REQUIRED,
    to_int64,
)

log = logging.getLogger(__name__)

SIZE_FEATURE = "log1p_size"
#: Numeric features always present (size is added when the tables have it).
BASE_NUMERIC_FEATURES = ["log1p_connection_synapses", "log1p_post_input_synapses", "depth_y"]
CATEGORICAL_FEATURES = ["post_class"]
#: Postsynaptic classes besides the mapped ones.
OTHER, UNKNOWN = "other", "unknown"

SPLIT_REQUIRED = [*SYNAPSE_REQUIRED, "label", "split"]


def _post_classes(
    cell_types: pd.DataFrame, label_column: str, classes: Mapping[str, str]
) -> pd.Series:
    """Class of each postsynaptic root id (index), mapped as the presynaptic labels are."""
    require_columns(cell_types, [*CELL_TYPE_REQUIRED, label_column], "cell-type table")
    mapped = cell_types[label_column].map(dict(classes)).fillna(OTHER)
    per_root = pd.DataFrame({"root": cell_types["pt_root_id"], "cls": mapped})
    # A root listed twice with different classes is not trusted either way.
    distinct = per_root.drop_duplicates().groupby("root")["cls"]
    return distinct.agg(lambda values: values.iloc[0] if len(values) == 1 else OTHER)


def connectivity_features(
    split_table: pd.DataFrame,
    all_synapses: pd.DataFrame,
    cell_types: pd.DataFrame,
    label_column: str,
    classes: Mapping[str, str],
) -> pd.DataFrame:
    """Per-synapse features of ``split_table`` rows, in the same order, with no pre-neuron identity.

    Columns: ``log1p_size`` (only when the split or query table has ``size``),
    ``log1p_connection_synapses`` (synapses in this synapse's pre->post connection, counted on
    ``all_synapses`` and looked up by synapse id), ``log1p_post_input_synapses`` (input
    synapses of the postsynaptic cell in ``all_synapses``), ``depth_y`` (ctr y position, in the
    table's voxels: a proxy for cortical layer) and ``post_class`` (the postsynaptic cell's class
    through ``label_column``/``classes``: 'excitatory', 'inhibitory', 'other' or 'unknown').
    """
    require_columns(split_table, SYNAPSE_REQUIRED, "split table")
    require_columns(all_synapses, SYNAPSE_REQUIRED, "query synapse table")
    split_table = to_int64(split_table, SYNAPSE_ID_COLUMNS, "split table")
    all_synapses = to_int64(all_synapses, SYNAPSE_ID_COLUMNS, "query synapse table")
    per_synapse = _per_synapse(all_synapses)
    require_ids_in(split_table, per_synapse.index, "split table", "query synapse table",
                   "The split was made from another query: rerun the split stage.")
    looked_up = per_synapse.loc[split_table["id"].to_numpy()]
    post_inputs = all_synapses.groupby("post_pt_root_id").size()

    features = pd.DataFrame(index=split_table.index)
    size = _sizes(split_table, looked_up)
    if size is not None:
        features[SIZE_FEATURE] = np.log1p(size)
    features["log1p_connection_synapses"] = np.log1p(looked_up["connection"].to_numpy(dtype=float))
    post = split_table["post_pt_root_id"]
    features["log1p_post_input_synapses"] = np.log1p(
        post.map(post_inputs).fillna(0).to_numpy(dtype=float)
    )
    features["depth_y"] = split_table["ctr_pt_position_y"].to_numpy(dtype=float)
    cell_types = to_int64(cell_types, ["pt_root_id"], "cell-type table")
    features["post_class"] = (
        post.map(_post_classes(cell_types, label_column, classes)).fillna(UNKNOWN).astype(str)
    )
    return features


def _per_synapse(all_synapses: pd.DataFrame) -> pd.DataFrame:
    """Per synapse id of the query table: the synapse count of its pre->post connection, and
    its ``size`` where the table has one."""
    if all_synapses["id"].duplicated().any():
        dup = all_synapses["id"][all_synapses["id"].duplicated()].iloc[0]
        raise DataError(
            f"query synapse table: synapse id {dup} appears more than once; "
            "deduplicate the synapse export."
        )
    connection_size = all_synapses.groupby(["pre_pt_root_id", "post_pt_root_id"])["id"].transform(
        "size"
    )
    # Keyed by synapse id so the feature never depends on which pre id a row carries.
    per_synapse = pd.DataFrame(
        {"connection": connection_size.to_numpy()}, index=all_synapses["id"].to_numpy()
    )
    if "size" in all_synapses.columns:
        per_synapse["size"] = all_synapses["size"].to_numpy()
    return per_synapse


def _sizes(split_table: pd.DataFrame, looked_up: pd.DataFrame) -> np.ndarray | None:
    """Synapse sizes of the split rows (the split table's own, else the query's), as floats;
    None when neither table has them. A missing or negative size is a :class:`DataError`."""
    size = split_table["size"] if "size" in split_table.columns else looked_up.get("size")
    if size is None:
        return None
    size = pd.to_numeric(pd.Series(np.asarray(size), index=split_table.index), errors="coerce")
    if size.isna().any() or (size < 0).any():
        row = int((size.isna() | (size < 0)).to_numpy().nonzero()[0][0])
        raise DataError(
            f"split table: column 'size' row {row} is missing or negative; fix the export "
            "or drop the 'size' column to train without it."
        )
    return size.to_numpy(dtype=float)


def _pipeline(numeric: list[str], seed: int) -> Pipeline:
    columns = ColumnTransformer(
        [
            ("numeric", StandardScaler(), numeric),
            ("categorical", OneHotEncoder(handle_unknown="ignore"), CATEGORICAL_FEATURES),
        ]
    )
    classifier = LogisticRegression(class_weight="balanced", max_iter=1000, random_state=seed)
    return Pipeline([("columns", columns), ("classifier", classifier)])


def _scores(pipeline: Pipeline, features: pd.DataFrame, target: np.ndarray) -> dict[str, float]:
    """Loss, accuracy and balanced accuracy; NaN where the split is empty."""
    if len(target) == 0:
        return {"loss": float("nan"), "accuracy": float("nan"), "balanced_accuracy": float("nan")}
    prob = pipeline.predict_proba(features)[:, 1]
    predicted = (prob >= 0.5).astype(int)
    return {
        "loss": float(log_loss(target, prob, labels=[0, 1])),
        "accuracy": float(accuracy_score(target, predicted)),
        "balanced_accuracy": float(balanced_accuracy_score(target, predicted)),
    }


def _load_tables(
    split_path: str | Path, synapses_path: str | Path, cell_types_path: str | Path
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    split_table = pd.read_parquet(split_path)
    require_columns(split_table, SPLIT_REQUIRED, str(split_path))
    require_values_in(split_table, "label", LABELS, str(split_path),
                      "Rerun the label stage or fix the `labels` config.")
    require_values_in(split_table, "split", SPLITS, str(split_path), "Rerun the split stage.")
    return split_table, pd.read_parquet(synapses_path), pd.read_parquet(cell_types_path)


def train_connectivity(
    split_path: str | Path,
    synapses_path: str | Path,
    cell_types_path: str | Path,
    label_column: str,
    classes: Mapping[str, str],
    out_dir: str | Path,
    seed: int,
) -> dict[str, Any]:
    """Fit the baseline on the train split; write ``model.joblib`` and ``history.csv``.

    ``model.joblib`` holds ``{"pipeline": Pipeline, "metadata": dict}``; ``history.csv`` has one
    row (epoch 1) of train and val loss, accuracy and balanced accuracy, so every model has a
    history. Returns the metadata (features used, sklearn version, counts, the history row).
    """
    split_table, all_synapses, cell_types = _load_tables(split_path, synapses_path, cell_types_path)
    features = connectivity_features(split_table, all_synapses, cell_types, label_column, classes)
    target = split_table["label"].map(LABEL_INDEX).to_numpy(dtype=int)
    is_train = (split_table["split"] == "train").to_numpy()
    is_val = (split_table["split"] == "val").to_numpy()
    train_labels = set(split_table.loc[is_train, "label"])
    if train_labels != set(LABELS):
        raise DataError(
            f"{split_path}: the train split holds only {sorted(train_labels) or 'no'} synapses; "
            "the baseline needs both classes. Use more neurons or other split fractions."
        )

    numeric = [c for c in [SIZE_FEATURE, *BASE_NUMERIC_FEATURES] if c in features.columns]
    notes = []
    if SIZE_FEATURE not in features.columns:
        notes.append("synapse size absent from the tables: trained without it")
        log.warning("connectivity baseline: %s", notes[-1])
    features = features[numeric + CATEGORICAL_FEATURES]
    pipeline = _pipeline(numeric, seed)
    pipeline.fit(features.loc[is_train], target[is_train])

    train_scores = _scores(pipeline, features.loc[is_train], target[is_train])
    val_scores = _scores(pipeline, features.loc[is_val], target[is_val])
    history = {"epoch": 1}
    history.update({f"train_{key}": value for key, value in train_scores.items()})
    history.update({f"val_{key}": value for key, value in val_scores.items()})
    metadata = _metadata(numeric, notes, label_column, classes, seed, is_train, is_val, history)
    out_dir = Path(out_dir)
    with atomic_path(out_dir / "model.joblib") as tmp:
        joblib.dump({"pipeline": pipeline, "metadata": metadata}, tmp)
    write_text(out_dir / "history.csv", pd.DataFrame([history]).to_csv(index=False))
    log.info("connectivity baseline: train %s, val %s", train_scores, val_scores)
    return metadata


def _metadata(
    numeric: list[str],
    notes: list[str],
    label_column: str,
    classes: Mapping[str, str],
    seed: int,
    is_train: np.ndarray,
    is_val: np.ndarray,
    history: dict[str, Any],
) -> dict[str, Any]:
    """What ``model.joblib`` records beside the pipeline: the features, the label mapping, the
    counts and the history row (keys in the order the file has always had)."""
    return {
        "architecture": "connectivity",
        "input": "tables",
        "numeric_features": numeric,
        "categorical_features": list(CATEGORICAL_FEATURES),
        "size_used": SIZE_FEATURE in numeric,
        "notes": notes,
        "label_column": label_column,
        "classes": dict(classes),
        "positive_class": INHIBITORY,
        "negative_class": EXCITATORY,
        "seed": seed,
        "n_train": int(is_train.sum()),
        "n_val": int(is_val.sum()),
        "sklearn_version": sklearn.__version__,
        "history": history,
    }


def predict_connectivity(
    model_path: str | Path,
    split_path: str | Path,
    synapses_path: str | Path,
    cell_types_path: str | Path,
    splits: Iterable[str] = ("val", "test"),
) -> pd.DataFrame:
    """Probability of 'inhibitory' for the synapses of ``splits``.

    Returns ``id, pre_pt_root_id, split, label, prob_inhibitory``, as the image models' inference.
    """
    saved = joblib.load(model_path)
    if not isinstance(saved, dict) or "pipeline" not in saved or "metadata" not in saved:
        raise DataError(
            f"{model_path}: not a connectivity baseline written by train_connectivity; "
            "retrain it (delete the file and rerun)."
        )
    pipeline, metadata = saved["pipeline"], saved["metadata"]
    split_table, all_synapses, cell_types = _load_tables(split_path, synapses_path, cell_types_path)
    chosen = split_table["split"].isin(list(splits)).to_numpy()
    split_table = split_table.loc[chosen].reset_index(drop=True)
    features = connectivity_features(
        split_table, all_synapses, cell_types, metadata["label_column"], metadata["classes"]
    )
    columns = metadata["numeric_features"] + metadata["categorical_features"]
    missing = [column for column in columns if column not in features.columns]
    if missing:
        raise DataError(
            f"{model_path}: the model was trained with {missing}, which the tables no longer "
            "provide; retrain the baseline on these tables."
        )
    prob = pipeline.predict_proba(features[columns])[:, 1] if len(features) else np.empty(0)
    ids = to_int64(split_table, ["id", "pre_pt_root_id"], str(split_path))
    return pd.DataFrame(
        {
            "id": ids["id"].to_numpy(),
            "pre_pt_root_id": ids["pre_pt_root_id"].to_numpy(),
            "split": split_table["split"].astype(str).to_numpy(),
            "label": split_table["label"].astype(str).to_numpy(),
            "prob_inhibitory": prob.astype(float),
        }
    )
