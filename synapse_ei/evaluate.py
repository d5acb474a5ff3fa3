"""Test-split metrics and figures of one model; inhibitory is the positive class.

Synapses of one presynaptic neuron share its label and look alike, so they are not independent
samples: confidence intervals come from a bootstrap over presynaptic neurons, not synapses.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # figures are files; no display on a cluster node

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import sparse  # noqa: E402
from sklearn.metrics import (  # noqa: E402
    ConfusionMatrixDisplay,
    RocCurveDisplay,
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from synapse_ei.errors import DataError  # noqa: E402
from synapse_ei.io import atomic_path, write_json, write_parquet  # noqa: E402
from synapse_ei.tables import INHIBITORY, LABEL_INDEX, LABELS  # noqa: E402

log = logging.getLogger(__name__)

PREDICTION_COLUMNS = ["id", "pre_pt_root_id", "split", "label", "prob_inhibitory"]
DEFAULT_THRESHOLD = 0.5
N_BOOTSTRAP = 1000
BOOTSTRAP_SEED = 0


def _targets(labels: Sequence[str] | np.ndarray) -> np.ndarray:
    labels = np.asarray(labels, dtype=object)
    unknown = sorted({str(value) for value in labels if value not in LABEL_INDEX})
    if unknown:
        raise DataError(f"labels {unknown} are not one of {list(LABELS)}; fix the label column.")
    return np.array([LABEL_INDEX[value] for value in labels], dtype=int)


def compute_metrics(
    labels: Sequence[str] | np.ndarray, prob_inhibitory: np.ndarray, threshold: float = 0.5
) -> dict[str, Any]:
    """Accuracy, balanced accuracy, ROC-AUC, PR-AUC, per-class precision/recall/F1, confusion.

    A synapse is called inhibitory when ``prob_inhibitory >= threshold``. The confusion matrix
    has true classes as rows and predicted as columns, both ordered (excitatory, inhibitory).
    Raises :class:`DataError` when the labels hold a single class (ROC-AUC is then undefined).
    """
    target = _targets(labels)
    prob = np.asarray(prob_inhibitory, dtype=float)
    if len(prob) != len(target):
        raise DataError(f"{len(target)} labels but {len(prob)} probabilities; they must pair up.")
    present = sorted({LABELS[value] for value in target})
    if len(present) < 2:
        raise DataError(
            f"the labels hold only {present or 'no'} synapses; metrics need both classes."
        )
    predicted = (prob >= threshold).astype(int)
    precision, recall, f1, support = precision_recall_fscore_support(
        target, predicted, labels=[0, 1], zero_division=0
    )
    per_class = {
        name: {
            "precision": float(precision[index]),
            "recall": float(recall[index]),
            "f1": float(f1[index]),
            "support": int(support[index]),
        }
        for index, name in enumerate(LABELS)
    }
    return {
        "threshold": float(threshold),
        "n_synapses": int(len(target)),
        "accuracy": float(accuracy_score(target, predicted)),
        "balanced_accuracy": float(balanced_accuracy_score(target, predicted)),
        "roc_auc": float(roc_auc_score(target, prob)),
        "pr_auc": float(average_precision_score(target, prob)),
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(target, predicted, labels=[0, 1]).tolist(),
        "confusion_matrix_order": list(LABELS),
    }


def tune_threshold(labels: Sequence[str] | np.ndarray, prob_inhibitory: np.ndarray) -> float:
    """The threshold that maximises balanced accuracy on these (validation) synapses.

    Balanced accuracy is (TPR + TNR) / 2, so the best threshold is the ROC point furthest from
    the diagonal; ties go to the threshold closest to 0.5.
    """
    target = _targets(labels)
    fpr, tpr, thresholds = roc_curve(target, np.asarray(prob_inhibitory, dtype=float))
    finite = np.isfinite(thresholds)
    score = (tpr - fpr)[finite]
    candidates = thresholds[finite]
    best = candidates[np.isclose(score, score.max())]
    return float(best[np.argmin(np.abs(best - DEFAULT_THRESHOLD))])


def _neuron_weighted_scores(
    draws: np.ndarray,
    target: np.ndarray,
    prob: np.ndarray,
    neuron_of_synapse: np.ndarray,
    threshold: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Balanced accuracy and ROC-AUC for each row of ``draws`` (times each neuron was drawn).

    Equal to sklearn's scores with ``sample_weight`` = the draw count of each synapse's neuron,
    computed for many resamples at once: sklearn's per-call overhead would dominate 1000 calls.
    ROC-AUC is the Mann-Whitney statistic over distinct scores, ties counting one half.
    """
    n_neurons = draws.shape[1]
    values, value_of_synapse = np.unique(prob, return_inverse=True)
    called = prob >= threshold

    def per_neuron(mask: np.ndarray) -> np.ndarray:
        return np.bincount(neuron_of_synapse[mask], minlength=n_neurons).astype(float)

    positives, negatives = draws @ per_neuron(target == 1), draws @ per_neuron(target == 0)
    true_positive = draws @ per_neuron((target == 1) & called)
    true_negative = draws @ per_neuron((target == 0) & ~called)
    with np.errstate(invalid="ignore", divide="ignore"):
        balanced = (true_positive / positives + true_negative / negatives) / 2

    def by_value(mask: np.ndarray) -> sparse.csr_matrix:
        # neurons x distinct scores: how many synapses of the class each neuron has at each score
        return sparse.csr_matrix(
            (np.ones(int(mask.sum())), (neuron_of_synapse[mask], value_of_synapse[mask])),
            shape=(n_neurons, len(values)),
        )

    positive_at = (by_value(target == 1).T @ draws.T).T
    negative_at = (by_value(target == 0).T @ draws.T).T
    negative_below = np.cumsum(negative_at, axis=1) - negative_at
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (positive_at * (negative_below + 0.5 * negative_at)).sum(axis=1) / (
            positives * negatives
        )
    return balanced, auc


def bootstrap_over_neurons(
    labels: Sequence[str] | np.ndarray,
    prob_inhibitory: np.ndarray,
    neuron_ids: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    n_resamples: int = N_BOOTSTRAP,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, Any]:
    """95% percentile intervals of balanced accuracy and ROC-AUC, resampling presynaptic neurons.

    Each resample draws neurons with replacement and takes all their synapses (a neuron drawn k
    times weighs k). Resamples holding a single class are skipped and counted out of ``n_used``.
    """
    target = _targets(labels)
    prob = np.asarray(prob_inhibitory, dtype=float)
    neurons, neuron_of_synapse = np.unique(np.asarray(neuron_ids), return_inverse=True)
    rng = np.random.default_rng(seed)
    n_distinct = len(np.unique(prob))
    # Chunks keep the (resamples x distinct scores) matrices near 16 MB whatever the test size.
    chunk = max(1, min(n_resamples, 2_000_000 // max(n_distinct, len(neurons), 1)))
    balanced, auc = [], []
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        draws = rng.multinomial(len(neurons), np.full(len(neurons), 1.0 / len(neurons)), size=size)
        chunk_balanced, chunk_auc = _neuron_weighted_scores(
            draws.astype(float), target, prob, neuron_of_synapse, threshold
        )
        both_classes = np.isfinite(chunk_balanced) & np.isfinite(chunk_auc)
        balanced.append(chunk_balanced[both_classes])
        auc.append(chunk_auc[both_classes])
    balanced_all, auc_all = np.concatenate(balanced), np.concatenate(auc)

    def interval(values: np.ndarray) -> dict[str, float]:
        if len(values) == 0:
            return {"ci_low": float("nan"), "ci_high": float("nan")}
        low, high = np.percentile(values, [2.5, 97.5])
        return {"ci_low": float(low), "ci_high": float(high)}

    return {
        "unit": "presynaptic neuron",
        "n_neurons": int(len(neurons)),
        "n_resamples": int(n_resamples),
        "n_used": int(len(balanced_all)),
        "seed": int(seed),
        "threshold": float(threshold),
        "balanced_accuracy": interval(balanced_all),
        "roc_auc": interval(auc_all),
    }


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


def _plot_confusion(matrix: list[list[int]], path: Path, model_name: str) -> None:
    figure, axes = plt.subplots(figsize=(4.2, 3.8))
    ConfusionMatrixDisplay(np.asarray(matrix), display_labels=list(LABELS)).plot(
        ax=axes, colorbar=False, cmap="Blues"
    )
    axes.set_title(f"{model_name}: test, threshold {DEFAULT_THRESHOLD}")
    _save(figure, path)


def _plot_roc(target: np.ndarray, prob: np.ndarray, path: Path, model_name: str) -> None:
    figure, axes = plt.subplots(figsize=(4.2, 4.2))
    RocCurveDisplay.from_predictions(target, prob, ax=axes, name=model_name, pos_label=1)
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    axes.set_xlabel("false positive rate (excitatory called inhibitory)")
    axes.set_ylabel("true positive rate (inhibitory recall)")
    axes.set_title("ROC, test split (positive: inhibitory)")
    axes.legend(loc="lower right")
    _save(figure, path)


def _plot_history(history_path: str | Path | None, path: Path, model_name: str) -> None:
    """Loss (train and val) and val balanced accuracy per epoch; points when there is one epoch."""
    history = pd.DataFrame()
    if history_path is not None and Path(history_path).exists():
        history = pd.read_csv(history_path)
    figure, (loss_axes, score_axes) = plt.subplots(1, 2, figsize=(8, 3.4))
    if history.empty or "epoch" not in history.columns:
        for axes in (loss_axes, score_axes):
            axes.text(0.5, 0.5, "no training history", ha="center", va="center")
    else:
        style = {"marker": "o", "linestyle": "-" if len(history) > 1 else "none"}
        for column in ("train_loss", "val_loss"):
            if column in history.columns:
                loss_axes.plot(history["epoch"], history[column], label=column, **style)
        for column in ("train_balanced_accuracy", "val_balanced_accuracy"):
            if column in history.columns:
                score_axes.plot(history["epoch"], history[column], label=column, **style)
        score_axes.axhline(0.5, linestyle="--", color="grey", label="chance")
        for axes in (loss_axes, score_axes):
            axes.set_xlabel("epoch")
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
            if axes.get_legend_handles_labels()[0]:
                axes.legend()
    loss_axes.set_ylabel("loss")
    score_axes.set_ylabel("balanced accuracy")
    figure.suptitle(model_name)
    _save(figure, path)


def _save(figure: plt.Figure, path: Path) -> None:
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    plt.close(figure)


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

    Writes ``metrics.json``, ``predictions.parquet``, ``confusion_matrix.png``, ``roc.png`` and
    ``training_curves.png`` into ``out_dir``. ``details`` (e.g. architecture, input) is copied
    into the metrics. Raises :class:`DataError` when test has no predictions or one class.
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

    metrics: dict[str, Any] = {"model": model_name, **dict(details or {})}
    metrics["positive_class"] = INHIBITORY
    metrics["test"] = compute_metrics(test["label"], test["prob_inhibitory"], DEFAULT_THRESHOLD)

    if val["label"].nunique() == 2:
        threshold = tune_threshold(val["label"], val["prob_inhibitory"])
        val_score = compute_metrics(val["label"], val["prob_inhibitory"], threshold)
        tuned = {"chosen_on": "val", "val_balanced_accuracy": val_score["balanced_accuracy"]}
    else:
        threshold = DEFAULT_THRESHOLD
        tuned = {"chosen_on": "default: val lacks a class or is empty"}
        log.warning("model %s: %s; tuned threshold kept at 0.5", model_name, tuned["chosen_on"])
    tuned["threshold"] = threshold
    tuned["test"] = compute_metrics(test["label"], test["prob_inhibitory"], threshold)
    metrics["tuned_threshold"] = tuned

    metrics["bootstrap"] = bootstrap_over_neurons(
        test["label"],
        test["prob_inhibitory"].to_numpy(),
        test["pre_pt_root_id"].to_numpy(),
        threshold=DEFAULT_THRESHOLD,
        n_resamples=n_resamples,
        seed=seed,
    )
    metrics["counts"] = {"test": _counts(test), "val": _counts(val)}

    write_json(out_dir / "metrics.json", metrics)
    write_parquet(out_dir / "predictions.parquet", predictions)
    matrix = metrics["test"]["confusion_matrix"]
    _plot_confusion(matrix, out_dir / "confusion_matrix.png", model_name)
    _plot_roc(
        _targets(test["label"]), test["prob_inhibitory"].to_numpy(), out_dir / "roc.png", model_name
    )
    _plot_history(history_path, out_dir / "training_curves.png", model_name)
    log.info(
        "model %s: test balanced accuracy %.3f, ROC-AUC %.3f",
        model_name,
        metrics["test"]["balanced_accuracy"],
        metrics["test"]["roc_auc"],
    )
    return metrics
