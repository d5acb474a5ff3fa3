"""Test-split metrics and figures of one model; inhibitory is the positive class.

Synapses of one presynaptic neuron share its label and look alike, so they are not independent
samples: confidence intervals come from a bootstrap over presynaptic neurons, not synapses.
"""

from __future__ import annotations

import json
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
    PrecisionRecallDisplay,
    RocCurveDisplay,
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from synapse_ei.data import CutoutDataset, load_manifest  # noqa: E402
from synapse_ei.errors import DataError  # noqa: E402
from synapse_ei.io import atomic_path, write_json, write_parquet  # noqa: E402
from synapse_ei.tables import INHIBITORY, LABEL_INDEX, LABELS  # noqa: E402

log = logging.getLogger(__name__)

PREDICTION_COLUMNS = ["id", "pre_pt_root_id", "split", "label", "prob_inhibitory"]
DEFAULT_THRESHOLD = 0.5
N_BOOTSTRAP = 1000
BOOTSTRAP_SEED = 0
N_CALIBRATION_BINS = 10
#: Examples per (class, right/wrong) row of the gallery.
GALLERY_PER_GROUP = 4
#: What the metrics of a table-only model say in place of a gallery.
NO_GALLERY = "none: the connectivity baseline reads tables, not images"


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
    n_bins: int = N_CALIBRATION_BINS,
) -> dict[str, np.ndarray]:
    """Every bootstrapped score for each row of ``draws`` (times each neuron was drawn).

    Synapse-level scores equal sklearn's with ``sample_weight`` = the draw count of each
    synapse's neuron, computed for many resamples at once: sklearn's per-call overhead would
    dominate 1000 calls. ROC-AUC is the Mann-Whitney statistic over distinct scores, ties
    counting one half; PR-AUC is sklearn's average precision (precision at each distinct score
    times the recall gained there). Neuron-level scores weigh each neuron by its draw count.
    """
    n_neurons = draws.shape[1]
    values, value_of_synapse = np.unique(prob, return_inverse=True)
    called = prob >= threshold

    def per_neuron(mask: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        kept = None if weights is None else weights[mask]
        return np.bincount(neuron_of_synapse[mask], kept, minlength=n_neurons).astype(float)

    positives, negatives = draws @ per_neuron(target == 1), draws @ per_neuron(target == 0)
    true_positive = draws @ per_neuron((target == 1) & called)
    true_negative = draws @ per_neuron((target == 0) & ~called)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = (true_positive + true_negative) / (positives + negatives)
        balanced = (true_positive / positives + true_negative / negatives) / 2

    def by_value(mask: np.ndarray) -> sparse.csr_matrix:
        # neurons x distinct scores: how many synapses of the class each neuron has at each score
        return sparse.csr_matrix(
            (np.ones(int(mask.sum())), (neuron_of_synapse[mask], value_of_synapse[mask])),
            shape=(n_neurons, len(values)),
        )

    positive_at = np.asarray((by_value(target == 1).T @ draws.T).T)
    negative_at = np.asarray((by_value(target == 0).T @ draws.T).T)
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

    # Calibration: per bin, |sum of probabilities - number of inhibitory synapses| / N.
    bin_of_synapse = _calibration_bin(prob, n_bins)
    gap = np.zeros(len(draws))
    for index in range(n_bins):
        in_bin = bin_of_synapse == index
        if in_bin.any():
            predicted = draws @ per_neuron(in_bin, prob)
            gap += np.abs(predicted - draws @ per_neuron(in_bin & (target == 1)))
    with np.errstate(invalid="ignore", divide="ignore"):
        ece = gap / (positives + negatives)

    # Neuron level: each neuron called from its mean probability, weighed by its draw count.
    synapses = per_neuron(np.ones(len(prob), dtype=bool))
    present = synapses > 0
    mean_prob = np.divide(per_neuron(np.ones(len(prob), dtype=bool), prob), synapses,
                          out=np.zeros(n_neurons), where=present)
    inhibitory = per_neuron(target == 1) > 0
    correct = present & ((mean_prob >= threshold) == inhibitory)
    neurons_drawn = draws @ present.astype(float)
    inhibitory_drawn = draws @ (present & inhibitory)
    excitatory_drawn = draws @ (present & ~inhibitory)
    with np.errstate(invalid="ignore", divide="ignore"):
        neuron_accuracy = (draws @ correct.astype(float)) / neurons_drawn
        neuron_balanced = (
            (draws @ (correct & inhibitory)) / inhibitory_drawn
            + (draws @ (correct & ~inhibitory)) / excitatory_drawn
        ) / 2
    return {
        "accuracy": accuracy,
        "balanced_accuracy": balanced,
        "roc_auc": auc,
        "pr_auc": pr_auc,
        "expected_calibration_error": ece,
        "neuron_accuracy": neuron_accuracy,
        "neuron_balanced_accuracy": neuron_balanced,
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
    error, and neuron-level accuracy and balanced accuracy (see :func:`neuron_level`).
    Resamples holding a single class are skipped and counted out of ``n_used``. The same
    ``seed`` draws the same resamples whatever the threshold, so intervals at two thresholds
    are comparable.
    """
    target = _targets(labels)
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
        chunk_scores = _neuron_weighted_scores(
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


def _calibration_bin(prob: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bin of each probability; 1.0 falls in the last bin."""
    return np.minimum((np.asarray(prob, dtype=float) * n_bins).astype(int), n_bins - 1)


def reliability_table(
    labels: Sequence[str] | np.ndarray,
    prob_inhibitory: np.ndarray,
    n_bins: int = N_CALIBRATION_BINS,
) -> pd.DataFrame:
    """Per equal-width probability bin: its edges, synapse count, mean predicted probability of
    inhibitory and the observed fraction of inhibitory synapses (NaN in empty bins)."""
    target = _targets(labels)
    prob = np.asarray(prob_inhibitory, dtype=float)
    bins = _calibration_bin(prob, n_bins)
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


def neuron_table(
    labels: Sequence[str] | np.ndarray, prob_inhibitory: np.ndarray, neuron_ids: np.ndarray
) -> pd.DataFrame:
    """One row per presynaptic neuron: its label, synapse count and mean probability of
    inhibitory. Raises :class:`DataError` when a neuron's synapses carry both labels."""
    frame = pd.DataFrame(
        {
            "pre_pt_root_id": np.asarray(neuron_ids),
            "label": np.asarray(labels, dtype=object),
            "prob_inhibitory": np.asarray(prob_inhibitory, dtype=float),
        }
    )
    mixed = frame.groupby("pre_pt_root_id")["label"].nunique()
    if (mixed > 1).any():
        raise DataError(
            f"presynaptic neuron {int(mixed[mixed > 1].index[0])} has synapses labelled both "
            "excitatory and inhibitory; a neuron has one type. Rerun the label stage."
        )
    grouped = frame.groupby("pre_pt_root_id", sort=True)
    return pd.DataFrame(
        {
            "label": grouped["label"].first(),
            "n_synapses": grouped.size(),
            "mean_prob_inhibitory": grouped["prob_inhibitory"].mean(),
        }
    ).reset_index()


def neuron_level(
    labels: Sequence[str] | np.ndarray,
    prob_inhibitory: np.ndarray,
    neuron_ids: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
) -> dict[str, Any]:
    """Each presynaptic neuron called inhibitory when its synapses' mean probability of
    inhibitory is at least ``threshold``: accuracy, balanced accuracy and counts per class."""
    neurons = neuron_table(labels, prob_inhibitory, neuron_ids)
    target = _targets(neurons["label"])
    called = (neurons["mean_prob_inhibitory"].to_numpy() >= threshold).astype(int)
    correct = called == target
    per_class = {
        name: {"neurons": int((target == index).sum()),
               "correct": int(correct[target == index].sum())}
        for index, name in enumerate(LABELS)
    }
    both = all(counts["neurons"] > 0 for counts in per_class.values())
    return {
        "threshold": float(threshold),
        "rule": "mean probability of inhibitory over the neuron's synapses >= threshold",
        "n_neurons": int(len(neurons)),
        "accuracy": float(correct.mean()),
        "balanced_accuracy": float(balanced_accuracy_score(target, called)) if both else None,
        "per_class": per_class,
        "synapses_per_neuron": {
            "min": int(neurons["n_synapses"].min()),
            "median": float(neurons["n_synapses"].median()),
            "max": int(neurons["n_synapses"].max()),
        },
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


def _plot_confusion(matrices: Mapping[str, list[list[int]]], path: Path, model_name: str) -> None:
    """One confusion matrix per threshold (title -> matrix), side by side."""
    figure, axes_row = plt.subplots(1, len(matrices), figsize=(4.2 * len(matrices), 3.8))
    for axes, (title, matrix) in zip(np.atleast_1d(axes_row), matrices.items()):
        ConfusionMatrixDisplay(np.asarray(matrix), display_labels=list(LABELS)).plot(
            ax=axes, colorbar=False, cmap="Blues"
        )
        axes.set_title(title)
    figure.suptitle(f"{model_name}: test split")
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


def _plot_pr(target: np.ndarray, prob: np.ndarray, path: Path, model_name: str) -> None:
    figure, axes = plt.subplots(figsize=(4.2, 4.2))
    PrecisionRecallDisplay.from_predictions(target, prob, ax=axes, name=model_name, pos_label=1)
    axes.axhline(target.mean(), linestyle="--", color="grey", label="chance (prevalence)")
    axes.set_xlabel("recall (inhibitory)")
    axes.set_ylabel("precision (inhibitory)")
    axes.set_ylim(0, 1.02)
    axes.set_title("Precision-recall, test split")
    axes.legend(loc="lower left")
    _save(figure, path)


def _plot_reliability(table: pd.DataFrame, ece: float, path: Path, model_name: str) -> None:
    """Observed fraction inhibitory against mean predicted probability per bin, counts below."""
    figure, (curve, counts) = plt.subplots(
        2, 1, figsize=(4.2, 5.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    filled = table[table["n_synapses"] > 0]
    curve.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    curve.plot(filled["mean_prob_inhibitory"], filled["fraction_inhibitory"], marker="o",
               label=f"{model_name} (ECE {ece:.3f})")
    curve.set_ylabel("observed fraction inhibitory")
    curve.set_ylim(-0.02, 1.02)
    curve.legend(loc="upper left", fontsize="small")
    curve.set_title("Reliability, test split")
    width = table["bin_high"] - table["bin_low"]
    counts.bar(table["bin_low"], table["n_synapses"], width=width, align="edge",
               edgecolor="white")
    counts.set_xlabel("predicted probability of inhibitory")
    counts.set_ylabel("synapses")
    counts.set_xlim(0, 1)
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


def gallery_examples(
    predictions: pd.DataFrame, threshold: float = DEFAULT_THRESHOLD,
    per_group: int = GALLERY_PER_GROUP,
) -> dict[tuple[str, bool], pd.DataFrame]:
    """Test synapses to show, per (true class, called right?): the most confident ones.

    Right calls are sorted by the probability given to their true class, wrong ones by the
    probability given to the wrong class, highest first: the clearest successes and the most
    confident mistakes. Ties are broken by synapse id, so the choice is reproducible.
    """
    test = predictions[predictions["split"] == "test"]
    called = np.where(test["prob_inhibitory"] >= threshold, INHIBITORY, LABELS[0])
    right = called == test["label"].to_numpy()
    chosen = {}
    for label in LABELS:
        own = test["prob_inhibitory"] if label == INHIBITORY else 1 - test["prob_inhibitory"]
        for is_right in (True, False):
            group = test[(test["label"] == label).to_numpy() & (right == is_right)]
            confidence = own[group.index] if is_right else 1 - own[group.index]
            order = group.assign(_confidence=confidence).sort_values(
                ["_confidence", "id"], ascending=[False, True], kind="stable"
            )
            chosen[(label, is_right)] = order.head(per_group).drop(columns="_confidence")
    return chosen


def _gallery_tile(array: np.ndarray) -> np.ndarray:
    """A 2D patch as is; a 3D (Z, Y, X) cube as its central XY section above its central XZ
    section (z stretched to the sections' count of rows), split by a white row."""
    if array.ndim == 2:
        return array
    depth, height, _ = array.shape
    separator = np.full((1, array.shape[2]), 255, dtype=array.dtype)
    return np.vstack([array[depth // 2], separator, array[:, height // 2, :]])


def write_gallery(
    predictions_path: str | Path,
    manifest_path: str | Path,
    cutout_root: str | Path,
    kind: str,
    model_name: str,
    out_path: str | Path,
    threshold: float = DEFAULT_THRESHOLD,
    per_group: int = GALLERY_PER_GROUP,
) -> dict[str, int]:
    """A figure of right and wrong test calls of both classes with their probabilities.

    Four rows (excitatory right/wrong, inhibitory right/wrong) of up to ``per_group`` cutouts
    chosen by :func:`gallery_examples`; 2D patches as stored, 3D cubes as their central
    sections. Returns how many examples each row shows.
    """
    predictions = pd.read_parquet(predictions_path)
    manifest = load_manifest(manifest_path, "test", kind)
    chosen = gallery_examples(predictions, threshold, per_group)
    position = pd.Series(np.arange(len(manifest)), index=manifest["id"])
    missing = [int(i) for group in chosen.values() for i in group["id"] if i not in position.index]
    if missing:
        raise DataError(
            f"{manifest_path}: test synapse {missing[0]} of {predictions_path} has no {kind} "
            "cutout; the predictions come from another run. Rerun the evaluate stage."
        )
    cutouts = CutoutDataset(manifest, cutout_root, kind)
    figure, axes_grid = plt.subplots(
        len(chosen), per_group, figsize=(1.9 * per_group + 0.8, 2.1 * len(chosen)), squeeze=False
    )
    shown = {}
    for axes_row, ((label, is_right), group) in zip(axes_grid, chosen.items()):
        name = f"{label}, {'right' if is_right else 'wrong'}"
        shown[name.replace(", ", "_")] = int(len(group))
        for column, axes in enumerate(axes_row):
            axes.set_xticks([])
            axes.set_yticks([])
            if column == 0:
                axes.set_ylabel(name)
            if column >= len(group):
                axes.set_frame_on(False)
                if column == 0:
                    axes.text(0.5, 0.5, "none", ha="center", va="center", color="grey")
                continue
            row = group.iloc[column]
            tile = _gallery_tile(cutouts.read(int(position[row["id"]])))
            axes.imshow(tile, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            axes.set_title(f"p(inh) {row['prob_inhibitory']:.2f}", fontsize="small")
    view = "2D patches" if kind == "2d" else "3D cubes: central XY section over central XZ"
    figure.suptitle(f"{model_name}: test calls at threshold {threshold:g} ({view})",
                    fontsize="medium")
    _save(figure, Path(out_path))
    return shown
