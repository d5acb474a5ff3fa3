"""Synapse-level metrics of one model's predictions; inhibitory is the positive class."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from synapse_ei.errors import DataError
from synapse_ei.tables import LABEL_INDEX, LABELS

DEFAULT_THRESHOLD = 0.5
N_CALIBRATION_BINS = 10


def label_targets(labels: Sequence[str] | np.ndarray) -> np.ndarray:
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
    target = label_targets(labels)
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
    target = label_targets(labels)
    fpr, tpr, thresholds = roc_curve(target, np.asarray(prob_inhibitory, dtype=float))
    finite = np.isfinite(thresholds)
    score = (tpr - fpr)[finite]
    candidates = thresholds[finite]
    best = candidates[np.isclose(score, score.max())]
    return float(best[np.argmin(np.abs(best - DEFAULT_THRESHOLD))])


def calibration_bin(prob: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bin of each probability; 1.0 falls in the last bin."""
    return np.minimum((np.asarray(prob, dtype=float) * n_bins).astype(int), n_bins - 1)


def reliability_table(
    labels: Sequence[str] | np.ndarray,
    prob_inhibitory: np.ndarray,
    n_bins: int = N_CALIBRATION_BINS,
) -> pd.DataFrame:
    """Per equal-width probability bin: its edges, synapse count, mean predicted probability of
    inhibitory and the observed fraction of inhibitory synapses (NaN in empty bins)."""
    target = label_targets(labels)
    prob = np.asarray(prob_inhibitory, dtype=float)
    bins = calibration_bin(prob, n_bins)
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_prob = np.bincount(bins, prob, minlength=n_bins) / count
        fraction = np.bincount(bins, target.astype(float), minlength=n_bins) / count
    edges = np.linspace(0, 1, n_bins + 1)
    return pd.DataFrame(
        {
            "bin_low": edges[:-1],
            "bin_high": edges[1:],
            "n_synapses": count,
            "mean_prob_inhibitory": mean_prob,
            "fraction_inhibitory": fraction,
        }
    )


def expected_calibration_error(
    labels: Sequence[str] | np.ndarray,
    prob_inhibitory: np.ndarray,
    n_bins: int = N_CALIBRATION_BINS,
) -> float:
    """Expected calibration error of the inhibitory probability: the synapse-weighted mean, over
    equal-width bins, of |observed fraction inhibitory - mean predicted probability|."""
    table = reliability_table(labels, prob_inhibitory, n_bins)
    filled = table[table["n_synapses"] > 0]
    gaps = (filled["fraction_inhibitory"] - filled["mean_prob_inhibitory"]).abs()
    return float((gaps * filled["n_synapses"]).sum() / filled["n_synapses"].sum())
