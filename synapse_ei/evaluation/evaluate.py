"""Test-split metrics and figures of one model; inhibitory is the positive class.

Synapses of one presynaptic neuron share its label and look alike, so they are not independent
samples: synapse-level intervals come from a bootstrap over presynaptic neurons, neuron-level
ones are Wilson intervals over neurons (:mod:`synapse_ei.evaluation.intervals`)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from synapse_ei.errors import DataError
from synapse_ei.evaluation.bootstrap import bootstrap_over_neurons, BOOTSTRAP_SEED, N_BOOTSTRAP
from synapse_ei.evaluation.breakdown import DEFAULT_BINS, recall_breakdown, synapse_context
from synapse_ei.evaluation.figures import (
    plot_confusion,
    plot_history,
    plot_pr,
    plot_reliability,
    plot_roc,
    plot_breakdown,
    plot_synapses_needed,
)
from synapse_ei.evaluation.intervals import BALANCED_INTERVAL, NEURON_INTERVAL
from synapse_ei.evaluation.metrics import (
    compute_metrics,
    DEFAULT_THRESHOLD,
    expected_calibration_error,
    N_CALIBRATION_BINS,
    reliability_table,
    label_targets,
    tune_threshold,
)
from synapse_ei.evaluation.neurons import neuron_level
from synapse_ei.evaluation.sufficiency import DEFAULT_DRAWS, DEFAULT_KS, synapses_needed
from synapse_ei.outputs import atomic_path, read_json, write_json, write_parquet
from synapse_ei.tables import (
    CAVE_POSITION_RESOLUTION,
    INHIBITORY,
    LABELS,
    PREDICTION_COLUMNS,
    require_values_in,
)

log = logging.getLogger(__name__)

SYNAPSE_SCORES = ["accuracy", "balanced_accuracy", "roc_auc", "pr_auc"]


@dataclass(frozen=True)
class Analyses:
    """Settings of the researcher's analyses (config keys evaluate.synapses_per_call,
    evaluate.synapse_draws, evaluate.breakdown_bins)."""

    synapses_per_call: tuple[int, ...] = DEFAULT_KS
    synapse_draws: int = DEFAULT_DRAWS
    breakdown_bins: int = DEFAULT_BINS
    seed: int = 0


def _counts(frame: pd.DataFrame) -> dict[str, Any]:
    synapses = {name: int((frame["label"] == name).sum()) for name in LABELS}
    neurons = {
        name: int(frame.loc[frame["label"] == name, "pre_pt_root_id"].nunique()) for name in LABELS
    }
    synapses["total"] = int(len(frame))
    neurons["total"] = int(frame["pre_pt_root_id"].nunique())
    return {"synapses": synapses, "neurons": neurons}


def _check_predictions(predictions: pd.DataFrame, model_name: str) -> pd.DataFrame:
    where = f"predictions of model '{model_name}'"
    missing = [column for column in PREDICTION_COLUMNS if column not in predictions.columns]
    if missing:
        raise DataError(
            f"{where}: missing column(s) {missing}; inference must return {PREDICTION_COLUMNS}."
        )
    prob = pd.to_numeric(predictions["prob_inhibitory"], errors="coerce")
    bad = prob.isna() | (prob < 0) | (prob > 1)
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        raise DataError(
            f"{where}: prob_inhibitory row {row} is {predictions['prob_inhibitory'].iloc[row]!r}; "
            "probabilities must lie in [0, 1]. Check the model's output layer (sigmoid/softmax)."
        )
    require_values_in(predictions, "label", LABELS, where,
                      "Rerun the evaluate stage, which writes these predictions.")
    return predictions.assign(prob_inhibitory=prob.astype(float)).reset_index(drop=True)


def _with_intervals(scores: dict[str, Any], bootstrap: Mapping[str, Any],
                    names: Sequence[str]) -> dict[str, Any]:
    """``scores`` plus ``ci95``: the bootstrap interval of each of ``names``."""
    return {**scores, "ci95": {name: dict(bootstrap[name]) for name in names}}


def _test_and_val(predictions: pd.DataFrame, model_name: str) -> tuple[pd.DataFrame, ...]:
    """The test and val rows; raises :class:`DataError` when test is empty or one class."""
    test = predictions[predictions["split"] == "test"]
    val = predictions[predictions["split"] == "val"]
    if test.empty:
        raise DataError(
            f"predictions of model '{model_name}' hold no test synapses (splits: "
            f"{sorted(predictions['split'].unique())}); predict the 'test' split."
        )
    test_classes = sorted(test["label"].unique())
    if len(test_classes) < 2:
        raise DataError(
            f"predictions of model '{model_name}': the test split holds only {test_classes[0]} "
            "synapses; metrics need both classes. Use more neurons or another split seed."
        )
    return test, val


def _tune_on_val(val: pd.DataFrame, model_name: str) -> dict[str, Any]:
    """The threshold maximising val balanced accuracy; 0.5 when val lacks a class."""
    if val["label"].nunique() == 2:
        threshold = tune_threshold(val["label"], val["prob_inhibitory"])
        val_score = compute_metrics(val["label"], val["prob_inhibitory"], threshold)
        tuned: dict[str, Any] = {
            "chosen_on": "val", "val_balanced_accuracy": val_score["balanced_accuracy"]
        }
    else:
        threshold = DEFAULT_THRESHOLD
        tuned = {"chosen_on": "default: val lacks a class or is empty"}
        log.warning("model %s: %s; tuned threshold kept at 0.5", model_name, tuned["chosen_on"])
    tuned["threshold"] = threshold
    return tuned


def _score_at(test: pd.DataFrame, threshold: float, n_resamples: int,
              seed: int) -> dict[str, Any]:
    """Synapse-level scores with bootstrap intervals, neuron-level ones with Wilson intervals,
    and the bootstrap itself, at one threshold."""
    labels, prob = test["label"], test["prob_inhibitory"].to_numpy()
    neurons = test["pre_pt_root_id"].to_numpy()
    boot = bootstrap_over_neurons(labels, prob, neurons, threshold, n_resamples, seed)
    return {
        "synapse": _with_intervals(compute_metrics(labels, prob, threshold), boot, SYNAPSE_SCORES),
        "neuron": neuron_level(labels, prob, neurons, threshold),
        "bootstrap": boot,
    }


def _calibration(test: pd.DataFrame, boot: Mapping[str, Any]) -> tuple[dict, pd.DataFrame]:
    labels, prob = test["label"], test["prob_inhibitory"].to_numpy()
    reliability = reliability_table(labels, prob)
    return {
        "expected_calibration_error": expected_calibration_error(labels, prob),
        "ci95": {"expected_calibration_error": dict(boot["expected_calibration_error"])},
        "n_bins": N_CALIBRATION_BINS,
        "bins": json.loads(reliability.to_json(orient="records")),
    }, reliability


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON records, NaN as null."""
    return json.loads(frame.to_json(orient="records"))


def _analyses(test: pd.DataFrame, threshold: float, analyses: Analyses,
              split_table: pd.DataFrame | None, position_resolution: Sequence[float],
              model_name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The synapses-per-call curve and the recall breakdown at the tuned threshold."""
    curve = synapses_needed(
        test["label"], test["prob_inhibitory"].to_numpy(), test["pre_pt_root_id"].to_numpy(),
        threshold, analyses.synapses_per_call, analyses.synapse_draws, analyses.seed,
    )
    if split_table is not None:
        test = synapse_context(test, split_table, position_resolution,
                               f"split table of model '{model_name}'")
    return curve, recall_breakdown(test, threshold, analyses.breakdown_bins)


def _write_outputs(out_dir: Path, metrics: Mapping[str, Any], predictions: pd.DataFrame,
                   test: pd.DataFrame, reliability: pd.DataFrame, curve: pd.DataFrame,
                   breakdown: pd.DataFrame, history_path: str | Path | None) -> None:
    """metrics.json, predictions.parquet, the two analysis tables and every figure."""
    model_name = metrics["model"]
    tuned = metrics["tuned_threshold"]
    write_json(out_dir / "metrics.json", metrics)
    write_parquet(out_dir / "predictions.parquet", predictions)
    for name, frame in (("synapses_needed.csv", curve), ("recall_breakdown.csv", breakdown)):
        with atomic_path(out_dir / name) as tmp:
            frame.to_csv(tmp, index=False)
    plot_confusion(
        {
            f"threshold {DEFAULT_THRESHOLD}": metrics["test"]["confusion_matrix"],
            f"tuned on val: {tuned['threshold']:.3f}": tuned["test"]["confusion_matrix"],
        },
        out_dir / "confusion_matrix.png",
        model_name,
    )
    target, prob = label_targets(test["label"]), test["prob_inhibitory"].to_numpy()
    plot_roc(target, prob, out_dir / "roc.png", model_name)
    plot_pr(target, prob, out_dir / "pr.png", model_name)
    plot_reliability(reliability, metrics["calibration"]["expected_calibration_error"],
                      out_dir / "reliability.png", model_name)
    plot_history(history_path, out_dir / "training_curves.png", model_name)
    plot_synapses_needed({model_name: curve}, out_dir / "synapses_needed.png",
                         f"{model_name}: synapses per neuron call, test split")
    plot_breakdown(breakdown, out_dir / "recall_breakdown.png", model_name)


def evaluate_predictions(
    predictions: pd.DataFrame,
    history_path: str | Path | None,
    model_name: str,
    out_dir: str | Path,
    details: Mapping[str, Any] | None = None,
    n_resamples: int = N_BOOTSTRAP,
    seed: int = BOOTSTRAP_SEED,
    analyses: Analyses = Analyses(),
    split_table: pd.DataFrame | None = None,
    position_resolution: Sequence[float] = CAVE_POSITION_RESOLUTION,
) -> dict[str, Any]:
    """Score the test split, tune a threshold on val, put intervals on it, write figures.

    Every headline number at the 0.5 and at the tuned threshold (synapse level: accuracy,
    balanced accuracy, ROC-AUC, PR-AUC, with bootstrap intervals over test presynaptic
    neurons; neuron level: accuracy, balanced accuracy, with Wilson intervals over neurons;
    the expected calibration error) carries a ``ci95`` interval. At the tuned threshold: the
    balanced accuracy of neuron calls from k synapses (``synapses_needed``) and the recall per
    cell type, synapse size and depth (``recall_breakdown``; those read ``split_table``, whose
    positions are in ``position_resolution`` nm voxels). Writes ``metrics.json``,
    ``predictions.parquet``, ``synapses_needed.csv``, ``recall_breakdown.csv`` and the figures
    (:func:`_write_outputs`) into ``out_dir``. ``details`` (e.g. architecture, input, tta) is
    copied into the metrics. Raises :class:`DataError` when test has no predictions or one
    class.
    """
    predictions = _check_predictions(predictions, model_name)
    test, val = _test_and_val(predictions, model_name)
    tuned = _tune_on_val(val, model_name)
    scored = {
        name: _score_at(test, cut, n_resamples, seed)
        for name, cut in (("default_threshold", DEFAULT_THRESHOLD),
                          ("tuned_threshold", tuned["threshold"]))
    }
    metrics: dict[str, Any] = {"model": model_name, **dict(details or {})}
    metrics["positive_class"] = INHIBITORY
    metrics["test"] = scored["default_threshold"]["synapse"]
    metrics["tuned_threshold"] = {**tuned, "test": scored["tuned_threshold"]["synapse"]}
    metrics["neuron_level"] = {name: score["neuron"] for name, score in scored.items()}
    metrics["calibration"], reliability = _calibration(
        test, scored["default_threshold"]["bootstrap"])
    metrics["bootstrap"] = {
        "unit": "presynaptic neuron",
        "interval": "95% percentile",
        "n_neurons": int(test["pre_pt_root_id"].nunique()),
        "n_resamples": int(n_resamples),
        "n_used": {name: score["bootstrap"]["n_used"] for name, score in scored.items()},
        "seed": int(seed),
        "neuron_level_interval": {"accuracy": NEURON_INTERVAL,
                                  "balanced_accuracy": BALANCED_INTERVAL},
    }
    metrics["counts"] = {"test": _counts(test), "val": _counts(val)}
    curve, breakdown = _analyses(test, tuned["threshold"], analyses, split_table,
                                 position_resolution, model_name)
    metrics["synapses_needed"] = {
        "threshold": tuned["threshold"], "n_draws": int(analyses.synapse_draws),
        "interval": BALANCED_INTERVAL, "curve": _records(curve),
    }
    metrics["recall_breakdown"] = {
        "threshold": tuned["threshold"], "interval": NEURON_INTERVAL,
        "n_bins": int(analyses.breakdown_bins), "rows": _records(breakdown),
    }
    _write_outputs(Path(out_dir), metrics, predictions, test, reliability, curve, breakdown,
                   history_path)
    _log_headline(metrics)
    return metrics


def _log_headline(metrics: Mapping[str, Any]) -> None:
    test = metrics["test"]
    log.info(
        "model %s: test balanced accuracy %.3f [%.3f, %.3f], ROC-AUC %.3f, ECE %.3f",
        metrics["model"], test["balanced_accuracy"], test["ci95"]["balanced_accuracy"]["ci_low"],
        test["ci95"]["balanced_accuracy"]["ci_high"], test["roc_auc"],
        metrics["calibration"]["expected_calibration_error"],
    )


def run_evaluate(
    architecture: str,
    model_path: str | Path,
    history_path: str | Path | None,
    split_path: str | Path,
    synapses_path: str | Path,
    cell_types_path: str | Path,
    provenance_path: str | Path,
    model_name: str,
    out_dir: str | Path,
    manifest_path: str | Path | None = None,
    cutout_root: str | Path | None = None,
    device: str = "auto",
    tta: str = "d4",
    analyses: Analyses = Analyses(),
) -> dict[str, Any]:
    """The evaluate stage of one model: predict val and test (the connectivity baseline from
    the tables, an image model from its cutouts, ``manifest_path`` under ``cutout_root``), then
    :func:`evaluate_predictions`."""
    # Imported here: the connectivity baseline needs no torch.
    from synapse_ei.evaluation.gallery import NO_GALLERY
    from synapse_ei.learn.models import input_kind

    image_model = architecture != "connectivity"
    if image_model:
        from synapse_ei.learn.inference import predict_cutouts

        if manifest_path is None or cutout_root is None:
            raise ValueError(f"model '{model_name}' ({architecture}) needs its cutout manifest")
        predictions = predict_cutouts(model_path, manifest_path=manifest_path,
                                      cutout_root=cutout_root, device=device, tta=tta)
    else:
        from synapse_ei.connectivity import predict_connectivity

        predictions = predict_connectivity(model_path, split_path=split_path,
                                           synapses_path=synapses_path,
                                           cell_types_path=cell_types_path)
    provenance = read_json(provenance_path)
    return evaluate_predictions(
        predictions, history_path=history_path, model_name=model_name, out_dir=out_dir,
        details={
            "architecture": architecture,
            "input": input_kind(architecture),
            "tta": tta if image_model else "none: table-only model",
            "gallery": "gallery.png" if image_model else NO_GALLERY,
        },
        analyses=analyses,
        split_table=pd.read_parquet(split_path),
        position_resolution=provenance.get("position_resolution", CAVE_POSITION_RESOLUTION),
    )
