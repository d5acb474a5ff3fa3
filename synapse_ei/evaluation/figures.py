"""The evaluation figures of one model: confusion matrices, ROC, PR, reliability, history."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are files; no display on a cluster node
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import (  # noqa: E402
    ConfusionMatrixDisplay,
    PrecisionRecallDisplay,
    RocCurveDisplay,
)

from synapse_ei.outputs import atomic_path  # noqa: E402
from synapse_ei.tables import LABELS  # noqa: E402


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
