"""Test-split metrics and figures of one model; inhibitory is the positive class.

Synapses of one presynaptic neuron share its label and look alike, so they are not independent
samples: confidence intervals come from a bootstrap over presynaptic neurons, not synapses."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from synapse_ei.errors import DataError
from synapse_ei.evaluation.bootstrap import bootstrap_over_neurons, BOOTSTRAP_SEED, N_BOOTSTRAP
from synapse_ei.evaluation.figures import (
    _plot_confusion,
    _plot_history,
    _plot_pr,
    _plot_reliability,
    _plot_roc,
)
from synapse_ei.evaluation.metrics import (
    compute_metrics,
    DEFAULT_THRESHOLD,
    expected_calibration_error,
    N_CALIBRATION_BINS,
    reliability_table,
    _targets,
    tune_threshold,
)
from synapse_ei.evaluation.neurons import neuron_level
from synapse_ei.outputs import write_json, write_parquet
from synapse_ei.tables import INHIBITORY, LABELS, PREDICTION_COLUMNS

log = logging.getLogger(__name__)


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
    bad = ~predictions["label"].isin(LABELS)
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        raise DataError(
            f"{where}: label row {row} is {predictions['label'].iloc[row]!r}, not one of "
            f"{list(LABELS)}."
        )
    return predictions.assign(prob_inhibitory=prob.astype(float)).reset_index(drop=True)


def _with_intervals(scores: dict[str, Any], bootstrap: Mapping[str, Any],
                    names: Sequence[str]) -> dict[str, Any]:
    """``scores`` plus ``ci95``: the bootstrap interval of each of ``names``."""
    return {**scores, "ci95": {name: dict(bootstrap[name]) for name in names}}


def evaluate_predictions(
    predictions: pd.DataFrame,
    history_path: str | Path | None,
    model_name: str,
    out_dir: str | Path,
    details: Mapping[str, Any] | None = None,
    n_resamples: int = N_BOOTSTRAP,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, Any]:
    """Score the test split, tune a threshold on val, bootstrap over neurons, write figures.

    Every headline number at the 0.5 and at the tuned threshold (synapse level: accuracy,
    balanced accuracy, ROC-AUC, PR-AUC; neuron level: accuracy, balanced accuracy; the expected
    calibration error) carries a ``ci95`` interval from a bootstrap over test presynaptic
    neurons. Writes ``metrics.json``, ``predictions.parquet``, ``confusion_matrix.png`` (0.5
    and tuned), ``roc.png``, ``pr.png``, ``reliability.png`` and ``training_curves.png`` into
    ``out_dir``. ``details`` (e.g. architecture, input, tta) is copied into the metrics. Raises
    :class:`DataError` when test has no predictions or one class.
    """
    predictions = _check_predictions(predictions, model_name)
    out_dir = Path(out_dir)
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
    labels, prob = test["label"], test["prob_inhibitory"].to_numpy()
    neurons = test["pre_pt_root_id"].to_numpy()

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

    synapse_scores = ["accuracy", "balanced_accuracy", "roc_auc", "pr_auc"]
    neuron_scores = {"accuracy": "neuron_accuracy", "balanced_accuracy": "neuron_balanced_accuracy"}
    metrics: dict[str, Any] = {"model": model_name, **dict(details or {})}
    metrics["positive_class"] = INHIBITORY
    neuron_level_scores: dict[str, Any] = {}
    used = {}
    for name, cut in (("default_threshold", DEFAULT_THRESHOLD), ("tuned_threshold", threshold)):
        boot = bootstrap_over_neurons(labels, prob, neurons, cut, n_resamples, seed)
        used[name] = boot["n_used"]
        scores = _with_intervals(compute_metrics(labels, prob, cut), boot, synapse_scores)
        if name == "default_threshold":
            metrics["test"] = scores
            calibration_interval = boot["expected_calibration_error"]
        else:
            tuned["test"] = scores
        by_neuron = neuron_level(labels, prob, neurons, cut)
        by_neuron["ci95"] = {short: dict(boot[long]) for short, long in neuron_scores.items()}
        neuron_level_scores[name] = by_neuron
    metrics["tuned_threshold"] = tuned
    metrics["neuron_level"] = neuron_level_scores
    reliability = reliability_table(labels, prob)
    ece = expected_calibration_error(labels, prob)
    metrics["calibration"] = {
        "expected_calibration_error": ece,
        "ci95": {"expected_calibration_error": dict(calibration_interval)},
        "n_bins": N_CALIBRATION_BINS,
        "bins": json.loads(reliability.to_json(orient="records")),
    }
    metrics["bootstrap"] = {
        "unit": "presynaptic neuron",
        "interval": "95% percentile",
        "n_neurons": int(test["pre_pt_root_id"].nunique()),
        "n_resamples": int(n_resamples),
        "n_used": used,
        "seed": int(seed),
    }
    metrics["counts"] = {"test": _counts(test), "val": _counts(val)}

    write_json(out_dir / "metrics.json", metrics)
    write_parquet(out_dir / "predictions.parquet", predictions)
    _plot_confusion(
        {
            f"threshold {DEFAULT_THRESHOLD}": metrics["test"]["confusion_matrix"],
            f"tuned on val: {threshold:.3f}": tuned["test"]["confusion_matrix"],
        },
        out_dir / "confusion_matrix.png",
        model_name,
    )
    target = _targets(labels)
    _plot_roc(target, prob, out_dir / "roc.png", model_name)
    _plot_pr(target, prob, out_dir / "pr.png", model_name)
    _plot_reliability(reliability, ece, out_dir / "reliability.png", model_name)
    _plot_history(history_path, out_dir / "training_curves.png", model_name)
    log.info(
        "model %s: test balanced accuracy %.3f [%.3f, %.3f], ROC-AUC %.3f, ECE %.3f",
        model_name,
        metrics["test"]["balanced_accuracy"],
        metrics["test"]["ci95"]["balanced_accuracy"]["ci_low"],
        metrics["test"]["ci95"]["balanced_accuracy"]["ci_high"],
        metrics["test"]["roc_auc"],
        ece,
    )
    return metrics
