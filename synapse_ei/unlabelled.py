"""Prediction on unlabelled synapses: those whose presynaptic cell has no cell-type row.

A trained image model scores each such synapse; each presynaptic neuron is then called from its
synapses as the evaluation calls test neurons (mean probability of inhibitory against the
threshold tuned on val), with the number of synapses behind the call, how many of them agree
and the balanced accuracy test neurons reached from as many synapses. The calls are also
written as a CAVE annotation table (:func:`cave_calls`) that a lab can share or upload.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from synapse_ei.curation.sampling import cap_per_group, uniform_keys
from synapse_ei.cutout.gather import read_shards, skipped_counts
from synapse_ei.cutout.manifest import OK
from synapse_ei.cutout.plan import plan_shards
from synapse_ei.errors import DataError
from synapse_ei.evaluation.neurons import calls_inhibitory, neuron_table
from synapse_ei.evaluation.sufficiency import CURVE_COLUMNS, expected_accuracy
from synapse_ei.outputs import atomic_path, read_json, write_json, write_parquet
from synapse_ei.tables import (
    CAVE_POSITION_RESOLUTION,
    CELL_TYPE_REQUIRED,
    EXCITATORY,
    INHIBITORY,
    require_columns,
    SYNAPSE_REQUIRED,
    to_int64,
)

log = logging.getLogger(__name__)

NEURON_COLUMNS = [
    "pre_pt_root_id",
    "n_synapses",
    "mean_prob_inhibitory",
    "predicted_label",
    "confidence",
    "expected_accuracy",
    "threshold",
]
#: The CAVE schema whose layout :func:`cave_calls` follows: a bound point (``pt``: position,
#: and the root id CAVE looks up there) with a free-text ``cell_type`` and
#: ``classification_system``. Our extra columns follow the schema's fields.
CAVE_SCHEMA = "cell_type_local"
CAVE_COLUMNS = ["pt_root_id", "pt_position", "cell_type", "classification_system",
                "prob_inhibitory", "n_synapses", "expected_accuracy"]
#: The voxel size (nm, XYZ) of ``pt_position``: CAVE's default for MICrONS.
CAVE_VOXEL_NM = CAVE_POSITION_RESOLUTION


def unlabelled_synapses(
    synapses: pd.DataFrame,
    cell_types: pd.DataFrame,
    max_synapses_per_neuron: int | None = None,
    seed: int = 0,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Synapses whose presynaptic root id has no row in ``cell_types``, sorted by id.

    Root id 0 (no segment) and autapses are left out, as the label stage drops them. With
    ``max_synapses_per_neuron`` a seeded sample of at most that many synapses is kept per
    neuron (orphan axons can have thousands). Returns the rows and a stats dict.
    """
    require_columns(synapses, SYNAPSE_REQUIRED, "query synapse table")
    require_columns(cell_types, CELL_TYPE_REQUIRED, "query cell-type table")
    synapses = to_int64(synapses, ["id", "pre_pt_root_id", "post_pt_root_id"],
                        "query synapse table")
    typed = set(to_int64(cell_types, ["pt_root_id"], "query cell-type table")["pt_root_id"])
    pre = synapses["pre_pt_root_id"]
    selected = synapses[
        (pre != 0) & ~pre.isin(typed) & (pre != synapses["post_pt_root_id"])
    ].sort_values("id", kind="stable")
    n_before_cap = len(selected)
    if max_synapses_per_neuron is not None:
        selected = cap_per_group(
            selected, "pre_pt_root_id", max_synapses_per_neuron,
            uniform_keys(len(selected), seed), "predict.max_synapses_per_neuron",
        )
    stats = {
        "synapses_in": int(len(synapses)),
        "unlabelled_synapses": int(n_before_cap),
        "kept_synapses": int(len(selected)),
        "neurons": int(selected["pre_pt_root_id"].nunique()),
        "max_synapses_per_neuron": max_synapses_per_neuron,
        "seed": int(seed),
    }
    return selected.reset_index(drop=True), stats


def plan_unlabelled(
    synapses_path: str | Path,
    cell_types_path: str | Path,
    plan_path: str | Path,
    stats_path: str | Path,
    n_shards: int,
    max_synapses_per_neuron: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Select the unlabelled synapses and plan their cutout shards as the cutout stage does."""
    selected, stats = unlabelled_synapses(
        pd.read_parquet(synapses_path), pd.read_parquet(cell_types_path),
        max_synapses_per_neuron, seed,
    )
    if selected.empty:
        raise DataError(
            f"{synapses_path}: every presynaptic cell has a row in {cell_types_path}; there is "
            "no unlabelled synapse to predict."
        )
    write_parquet(plan_path, plan_shards(selected, n_shards, key="predict.shards"))
    write_json(stats_path, stats)
    return stats


def read_cutout_shards(shard_dirs: Sequence[str | Path]) -> tuple[pd.DataFrame, dict[str, int]]:
    """The written rows of the shard manifests, sorted by id, and the count of skipped rows per
    reason; the shards are read and their stacks checked as the gather reads them."""
    root = Path(shard_dirs[0]).parent.parent if len(shard_dirs) else Path()
    everything = read_shards(shard_dirs, root, columns=())
    written = everything[everything["status"] == OK].sort_values("id", kind="stable")
    return written.reset_index(drop=True), skipped_counts(everything)


def infer_neurons(predictions: pd.DataFrame, threshold: float,
                  curve: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per presynaptic neuron of ``predictions`` (pre_pt_root_id, prob_inhibitory).

    ``predicted_label`` is inhibitory when the mean probability of inhibitory of its synapses
    is at least ``threshold``; ``confidence`` is the fraction of its synapses whose own call at
    ``threshold`` agrees (1.0 for a unanimous neuron, near 0.5 for a split one);
    ``expected_accuracy`` is the neuron balanced accuracy test neurons reached when called from
    as many synapses (:func:`synapse_ei.evaluation.sufficiency.expected_accuracy` on the
    model's ``curve``; NaN without one). Sorted by root id.
    """
    require_columns(predictions, ["pre_pt_root_id", "prob_inhibitory"], "predictions")
    neurons = neuron_table(None, predictions["prob_inhibitory"].to_numpy(),
                           predictions["pre_pt_root_id"].to_numpy(), threshold)
    inhibitory = calls_inhibitory(neurons["mean_prob_inhibitory"], threshold)
    fraction = neurons["fraction_called_inhibitory"]
    neurons = neurons.assign(
        predicted_label=np.where(inhibitory, INHIBITORY, EXCITATORY),
        confidence=np.where(inhibitory, fraction, 1 - fraction),
        expected_accuracy=(np.nan if curve is None
                           else expected_accuracy(neurons["n_synapses"], curve)),
        threshold=float(threshold),
    )
    return neurons[NEURON_COLUMNS]


def cave_calls(neurons: pd.DataFrame, synapses: pd.DataFrame, model: str,
               position_resolution: Sequence[float]) -> pd.DataFrame:
    """The neuron calls in the layout of a CAVE ``cell_type_local`` table (:data:`CAVE_COLUMNS`).

    Each axon's point is the presynaptic point (else the cleft centre) of its lowest-id synapse,
    which lies on the axon, converted from the table's ``position_resolution`` to
    :data:`CAVE_VOXEL_NM` voxels; ``pt_position`` holds ``[x, y, z]`` as CAVE returns and
    takes it. ``cell_type`` is the call; ``classification_system`` names the model.
    """
    point = next((columns for columns in (
        [f"pre_pt_position_{axis}" for axis in "xyz"],
        [f"ctr_pt_position_{axis}" for axis in "xyz"],
    ) if all(column in synapses.columns for column in columns)), None)
    if point is None:
        raise DataError(
            "unlabelled cutout manifest: no pre_pt_position_{x,y,z} or ctr_pt_position_{x,y,z} "
            "columns; the CAVE table needs a point per axon. Rerun plan_unlabelled."
        )
    first = synapses.sort_values("id", kind="stable").drop_duplicates("pre_pt_root_id")
    scale = np.asarray(position_resolution, dtype=float) / np.asarray(CAVE_VOXEL_NM)
    voxels = np.rint(first[point].to_numpy(dtype=float) * scale).astype(np.int64)
    position = pd.Series(list(voxels.tolist()), index=first["pre_pt_root_id"].to_numpy())
    calls = neurons.sort_values("pre_pt_root_id", kind="stable")
    return pd.DataFrame({
        "pt_root_id": calls["pre_pt_root_id"].to_numpy(np.int64),
        "pt_position": calls["pre_pt_root_id"].map(position).to_numpy(),
        "cell_type": calls["predicted_label"].to_numpy(),
        "classification_system": f"synapse-ei {model}",
        "prob_inhibitory": calls["mean_prob_inhibitory"].to_numpy(float),
        "n_synapses": calls["n_synapses"].to_numpy(np.int64),
        "expected_accuracy": calls["expected_accuracy"].to_numpy(float),
    }, columns=CAVE_COLUMNS)


def write_cave_calls(calls: pd.DataFrame, table_path: str | Path, csv_path: str | Path,
                     meta_path: str | Path, provenance: dict[str, Any], model: str,
                     threshold: float) -> None:
    """The CAVE table as parquet (``pt_position`` a list column) and CSV (``[x, y, z]`` text),
    and beside them what it was computed at: the materialization version and the schema."""
    write_parquet(table_path, calls)
    with atomic_path(csv_path) as tmp:
        calls.assign(pt_position=calls["pt_position"].map(
            lambda xyz: "[" + ", ".join(str(int(v)) for v in xyz) + "]")).to_csv(tmp, index=False)
    write_json(meta_path, {
        "schema": CAVE_SCHEMA,
        "schema_fields": {"pt": "pt_position (root id pt_root_id)", "cell_type": "the call",
                          "classification_system": "the model"},
        "extra_columns": ["prob_inhibitory", "n_synapses", "expected_accuracy"],
        "voxel_resolution_nm": list(CAVE_VOXEL_NM),
        "materialization_version": provenance.get("materialization_version"),
        "version_timestamp": provenance.get("version_timestamp"),
        "datastack": provenance.get("datastack"),
        "source": provenance.get("source"),
        "model": model,
        "threshold": float(threshold),
        "expected_accuracy": "neuron balanced accuracy of test neurons called from as many "
                             "synapses (the largest evaluated k at most the axon's count)",
        "upload": "client.annotation.post_annotation_df(table_name, calls[['pt_position', "
                  "'cell_type', 'classification_system']], position_columns=['pt_position']) "
                  "into a table created with schema 'cell_type_local' and voxel_resolution "
                  "[4, 4, 40]",
        "rows": int(len(calls)),
    })


def _read_evaluation(metrics_path: str | Path) -> tuple[float, pd.DataFrame | None]:
    """The val-tuned threshold and the synapses-per-call curve of a model's evaluation."""
    metrics = read_json(metrics_path)
    try:
        threshold = float(metrics["tuned_threshold"]["threshold"])
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(
            f"{metrics_path}: no tuned_threshold.threshold ({error}); rerun the evaluate stage."
        ) from None
    curve = metrics.get("synapses_needed", {}).get("curve")
    if curve is None:
        log.warning("%s: no synapses_needed curve (an older evaluation); expected_accuracy is "
                    "left empty. Rerun the evaluate stage to fill it.", metrics_path)
        return threshold, None
    return threshold, pd.DataFrame(curve, columns=CURVE_COLUMNS)


def predict_unlabelled(
    model_path: str | Path,
    metrics_path: str | Path,
    shard_dirs: Sequence[str | Path],
    synapses_out: str | Path,
    neurons_out: str | Path,
    stats_out: str | Path,
    provenance_path: str | Path,
    cave_out: Mapping[str, str | Path],
    model_name: str,
    device: str = "auto",
    tta: str = "d4",
) -> dict[str, Any]:
    """Score the cut unlabelled synapses with a trained image model and call their neurons.

    The threshold and the synapses-per-call curve are the model's evaluation's
    (``metrics.json``). Writes ``synapses_out`` (parquet: id, pre_pt_root_id,
    prob_inhibitory), ``neurons_out`` (CSV, :data:`NEURON_COLUMNS`), ``stats_out`` (counts,
    threshold, skipped cutouts) and the CAVE table (``cave_out``: ``table``, ``csv``, ``meta``;
    :func:`write_cave_calls`, at the query's materialization version from ``provenance_path``).
    """
    # Imported here: selecting and planning need no torch.
    from synapse_ei.learn.inference import predict_unlabelled_cutouts

    threshold, curve = _read_evaluation(metrics_path)
    manifest, skipped = read_cutout_shards(shard_dirs)
    if manifest.empty:
        raise DataError(
            f"none of the {sum(skipped.values())} unlabelled synapses could be cut (skipped: "
            f"{skipped}); see the cutout logs under results/logs/predict/."
        )
    root = Path(shard_dirs[0]).parent.parent
    probabilities = predict_unlabelled_cutouts(model_path, manifest, root, device=device, tta=tta)
    predictions = manifest[["id", "pre_pt_root_id"]].assign(prob_inhibitory=probabilities)
    neurons = infer_neurons(predictions, threshold, curve)
    write_parquet(synapses_out, predictions)
    with atomic_path(neurons_out) as tmp:
        neurons.to_csv(tmp, index=False)
    provenance = read_json(provenance_path)
    calls = cave_calls(neurons, manifest, model_name,
                       provenance.get("position_resolution", CAVE_POSITION_RESOLUTION))
    write_cave_calls(calls, cave_out["table"], cave_out["csv"], cave_out["meta"], provenance,
                     model_name, threshold)
    stats = {
        "model": str(model_path),
        "threshold": threshold,
        "threshold_chosen_on": "val (the model's evaluation)",
        "tta": tta,
        "synapses_predicted": int(len(predictions)),
        "synapses_skipped": skipped,
        "neurons": int(len(neurons)),
        "neurons_by_predicted_label": {
            label: int((neurons["predicted_label"] == label).sum())
            for label in (EXCITATORY, INHIBITORY)
        },
        "materialization_version": provenance.get("materialization_version"),
    }
    write_json(stats_out, stats)
    log.info("predicted %d unlabelled synapses of %d neurons (%s)", len(predictions),
             len(neurons), stats["neurons_by_predicted_label"])
    return stats
