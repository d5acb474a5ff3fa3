"""Confidence intervals from a bootstrap over presynaptic neurons.

Synapses of one presynaptic neuron share its label and look alike, so they are not independent
samples: intervals resample neurons, not synapses."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import sparse

from synapse_ei.evaluation.metrics import (
    calibration_bin,
    DEFAULT_THRESHOLD,
    N_CALIBRATION_BINS,
    label_targets,
)

N_BOOTSTRAP = 1000
BOOTSTRAP_SEED = 0


def _per_neuron(neuron_of_synapse: np.ndarray, n_neurons: int, mask: np.ndarray,
                weights: np.ndarray | None = None) -> np.ndarray:
    """Per neuron: how many synapses in ``mask`` it has (or the sum of their ``weights``)."""
    kept = None if weights is None else weights[mask]
    return np.bincount(neuron_of_synapse[mask], kept, minlength=n_neurons).astype(float)


def _threshold_scores(draws, target, called, neuron_of_synapse) -> dict[str, np.ndarray]:
    """Accuracy and balanced accuracy of the synapse calls, each synapse weighed by its
    neuron's draw count, plus the weighted class totals."""
    n_neurons = draws.shape[1]
    count = lambda mask: draws @ _per_neuron(neuron_of_synapse, n_neurons, mask)  # noqa: E731
    positives, negatives = count(target == 1), count(target == 0)
    true_positive, true_negative = count((target == 1) & called), count((target == 0) & ~called)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "accuracy": (true_positive + true_negative) / (positives + negatives),
            "balanced_accuracy": (true_positive / positives + true_negative / negatives) / 2,
            "positives": positives,
            "negatives": negatives,
        }


def _ranking_scores(draws, target, prob, neuron_of_synapse, positives, negatives):
    """ROC-AUC (the Mann-Whitney statistic over distinct scores, ties counting one half) and
    PR-AUC (sklearn's average precision: precision at each distinct score times the recall
    gained there), each synapse weighed by its neuron's draw count."""
    n_neurons = draws.shape[1]
    values, value_of_synapse = np.unique(prob, return_inverse=True)

    def at_value(mask: np.ndarray) -> np.ndarray:
        # resamples x distinct scores: weighted synapses of the class at each score
        by_value = sparse.csr_matrix(
            (np.ones(int(mask.sum())), (neuron_of_synapse[mask], value_of_synapse[mask])),
            shape=(n_neurons, len(values)),
        )
        return np.asarray((by_value.T @ draws.T).T)

    positive_at, negative_at = at_value(target == 1), at_value(target == 0)
    negative_below = np.cumsum(negative_at, axis=1) - negative_at
    # Synapses scoring at or above each distinct score (the score as a threshold).
    positive_from = np.cumsum(positive_at[:, ::-1], axis=1)[:, ::-1]
    negative_from = np.cumsum(negative_at[:, ::-1], axis=1)[:, ::-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (positive_at * (negative_below + 0.5 * negative_at)).sum(axis=1) / (
            positives * negatives
        )
        precision = np.where(positive_at > 0, positive_from / (positive_from + negative_from), 0)
        pr_auc = (positive_at * precision).sum(axis=1) / positives
    return auc, pr_auc


def _calibration_scores(draws, target, prob, neuron_of_synapse, n_bins, n_synapses):
    """Expected calibration error: per bin, |sum of probabilities - inhibitory synapses|,
    summed and divided by the synapse count (all weighed by draw counts)."""
    n_neurons = draws.shape[1]
    bin_of_synapse = calibration_bin(prob, n_bins)
    gap = np.zeros(len(draws))
    for index in range(n_bins):
        in_bin = bin_of_synapse == index
        if in_bin.any():
            predicted = draws @ _per_neuron(neuron_of_synapse, n_neurons, in_bin, prob)
            observed = draws @ _per_neuron(neuron_of_synapse, n_neurons, in_bin & (target == 1))
            gap += np.abs(predicted - observed)
    with np.errstate(invalid="ignore", divide="ignore"):
        return gap / n_synapses


def neuron_weighted_scores(
    draws: np.ndarray,
    target: np.ndarray,
    prob: np.ndarray,
    neuron_of_synapse: np.ndarray,
    threshold: float,
    n_bins: int = N_CALIBRATION_BINS,
) -> dict[str, np.ndarray]:
    """Every bootstrapped synapse-level score for each row of ``draws`` (times each neuron was
    drawn).

    The scores equal sklearn's with ``sample_weight`` = the draw count of each synapse's
    neuron, computed for many resamples at once: sklearn's per-call overhead would dominate
    1000 calls. Neuron-level scores carry Wilson intervals instead
    (:mod:`synapse_ei.evaluation.intervals`).
    """
    called = prob >= threshold
    counts = _threshold_scores(draws, target, called, neuron_of_synapse)
    positives, negatives = counts["positives"], counts["negatives"]
    auc, pr_auc = _ranking_scores(draws, target, prob, neuron_of_synapse, positives, negatives)
    ece = _calibration_scores(draws, target, prob, neuron_of_synapse, n_bins,
                              positives + negatives)
    return {
        "accuracy": counts["accuracy"],
        "balanced_accuracy": counts["balanced_accuracy"],
        "roc_auc": auc,
        "pr_auc": pr_auc,
        "expected_calibration_error": ece,
    }


def _interval(values: np.ndarray) -> dict[str, float]:
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return {"ci_low": float("nan"), "ci_high": float("nan")}
    low, high = np.percentile(values, [2.5, 97.5])
    return {"ci_low": float(low), "ci_high": float(high)}


def bootstrap_over_neurons(
    labels: Sequence[str] | np.ndarray,
    prob_inhibitory: np.ndarray,
    neuron_ids: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    n_resamples: int = N_BOOTSTRAP,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, Any]:
    """95% percentile intervals of every headline score, resampling presynaptic neurons.

    Each resample draws neurons with replacement and takes all their synapses (a neuron drawn k
    times weighs k). Scored: accuracy, balanced accuracy, ROC-AUC, PR-AUC, expected calibration
    error (neuron-level scores carry Wilson intervals: :mod:`synapse_ei.evaluation.intervals`).
    Resamples holding a single class are skipped and counted out of ``n_used``. The same
    ``seed`` draws the same resamples whatever the threshold, so intervals at two thresholds
    are comparable.
    """
    target = label_targets(labels)
    prob = np.asarray(prob_inhibitory, dtype=float)
    neurons, neuron_of_synapse = np.unique(np.asarray(neuron_ids), return_inverse=True)
    rng = np.random.default_rng(seed)
    n_distinct = len(np.unique(prob))
    # Chunks keep the (resamples x distinct scores) matrices near 16 MB whatever the test size.
    chunk = max(1, min(n_resamples, 2_000_000 // max(n_distinct, len(neurons), 1)))
    scores: dict[str, list[np.ndarray]] = {}
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        draws = rng.multinomial(len(neurons), np.full(len(neurons), 1.0 / len(neurons)), size=size)
        chunk_scores = neuron_weighted_scores(
            draws.astype(float), target, prob, neuron_of_synapse, threshold
        )
        both_classes = np.isfinite(chunk_scores["balanced_accuracy"]) & np.isfinite(
            chunk_scores["roc_auc"]
        )
        for name, values in chunk_scores.items():
            scores.setdefault(name, []).append(values[both_classes])
    drawn = {name: np.concatenate(values) for name, values in scores.items()}
    return {
        "unit": "presynaptic neuron",
        "n_neurons": int(len(neurons)),
        "n_resamples": int(n_resamples),
        "n_used": int(len(drawn["balanced_accuracy"])),
        "seed": int(seed),
        "threshold": float(threshold),
        **{name: _interval(values) for name, values in drawn.items()},
    }
