"""Prediction on unlabelled synapses: those whose presynaptic cell has no cell-type row.

A trained image model scores each such synapse; each presynaptic neuron is then called from its
synapses as the evaluation calls test neurons (mean probability of inhibitory against the
threshold tuned on val), with the number of synapses behind the call and how many of them agree.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from synapse_ei.curation.sampling import cap_per_group, uniform_keys
from synapse_ei.cutout.gather import read_shards, skipped_counts
from synapse_ei.cutout.manifest import OK
from synapse_ei.cutout.plan import plan_shards
from synapse_ei.errors import DataError
from synapse_ei.evaluation.neurons import calls_inhibitory
from synapse_ei.outputs import atomic_path, read_json, write_json, write_parquet
from synapse_ei.tables import (
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
    "threshold",
]


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


def infer_neurons(predictions: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """One row per presynaptic neuron of ``predictions`` (pre_pt_root_id, prob_inhibitory).

    ``predicted_label`` is inhibitory when the mean probability of inhibitory of its synapses
    is at least ``threshold``; ``confidence`` is the fraction of its synapses whose own call at
    ``threshold`` agrees (1.0 for a unanimous neuron, near 0.5 for a split one); read it with
    ``n_synapses``: a unanimous single synapse is weak evidence. Sorted by root id.
    """
    require_columns(predictions, ["pre_pt_root_id", "prob_inhibitory"], "predictions")
    called = calls_inhibitory(predictions["prob_inhibitory"], threshold)
    grouped = predictions.assign(_called=called).groupby("pre_pt_root_id", sort=True)
    mean = grouped["prob_inhibitory"].mean()
    inhibitory = calls_inhibitory(mean, threshold)
    fraction_inhibitory = grouped["_called"].mean()
    neurons = pd.DataFrame(
        {
            "n_synapses": grouped.size(),
            "mean_prob_inhibitory": mean,
            "predicted_label": np.where(inhibitory, INHIBITORY, EXCITATORY),
            "confidence": np.where(inhibitory, fraction_inhibitory, 1 - fraction_inhibitory),
            "threshold": float(threshold),
        }
    ).reset_index()
    return neurons[NEURON_COLUMNS]


def predict_unlabelled(
    model_path: str | Path,
    metrics_path: str | Path,
    shard_dirs: Sequence[str | Path],
    synapses_out: str | Path,
    neurons_out: str | Path,
    stats_out: str | Path,
    device: str = "auto",
    tta: str = "d4",
) -> dict[str, Any]:
    """Score the cut unlabelled synapses with a trained image model and call their neurons.

    The threshold is the one the model's evaluation tuned on val (``metrics.json``). Writes
    ``synapses_out`` (parquet: id, pre_pt_root_id, prob_inhibitory), ``neurons_out`` (CSV,
    :data:`NEURON_COLUMNS`) and ``stats_out`` (counts, threshold, skipped cutouts).
    """
    # Imported here: selecting and planning need no torch.
    from synapse_ei.learn.inference import predict_unlabelled_cutouts

    try:
        threshold = float(read_json(metrics_path)["tuned_threshold"]["threshold"])
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(
            f"{metrics_path}: no tuned_threshold.threshold ({error}); rerun the evaluate stage."
        ) from None
    manifest, skipped = read_cutout_shards(shard_dirs)
    if manifest.empty:
        raise DataError(
            f"none of the {sum(skipped.values())} unlabelled synapses could be cut (skipped: "
            f"{skipped}); see the cutout logs under results/logs/predict/."
        )
    root = Path(shard_dirs[0]).parent.parent
    probabilities = predict_unlabelled_cutouts(model_path, manifest, root, device=device, tta=tta)
    predictions = manifest[["id", "pre_pt_root_id"]].assign(prob_inhibitory=probabilities)
    neurons = infer_neurons(predictions, threshold)
    write_parquet(synapses_out, predictions)
    with atomic_path(neurons_out) as tmp:
        neurons.to_csv(tmp, index=False)
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
    }
    write_json(stats_out, stats)
    log.info("predicted %d unlabelled synapses of %d neurons (%s)", len(predictions),
             len(neurons), stats["neurons_by_predicted_label"])
    return stats
