"""The evaluation figures of one model: confusion matrices, ROC, PR, reliability, history, the
synapses a neuron call needs and the recall per cell type, synapse size and depth."""

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

from synapse_ei.reporting.render import interval_bars, save_figure  # noqa: E402
from synapse_ei.tables import LABELS  # noqa: E402


def plot_confusion(matrices: Mapping[str, list[list[int]]], path: Path, model_name: str) -> None:
    """One confusion matrix per threshold (title -> matrix), side by side."""
    figure, axes_row = plt.subplots(1, len(matrices), figsize=(4.2 * len(matrices), 3.8))
    for axes, (title, matrix) in zip(np.atleast_1d(axes_row), matrices.items()):
        ConfusionMatrixDisplay(np.asarray(matrix), display_labels=list(LABELS)).plot(
            ax=axes, colorbar=False, cmap="Blues"
        )
        axes.set_title(title)
    figure.suptitle(f"{model_name}: test split")
    save_figure(figure, path)


def plot_roc(target: np.ndarray, prob: np.ndarray, path: Path, model_name: str) -> None:
    figure, axes = plt.subplots(figsize=(4.2, 4.2))
    RocCurveDisplay.from_predictions(target, prob, ax=axes, name=model_name, pos_label=1)
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    axes.set_xlabel("false positive rate (excitatory called inhibitory)")
    axes.set_ylabel("true positive rate (inhibitory recall)")
    axes.set_title("ROC, test split (positive: inhibitory)")
    axes.legend(loc="lower right")
    save_figure(figure, path)


def plot_pr(target: np.ndarray, prob: np.ndarray, path: Path, model_name: str) -> None:
    figure, axes = plt.subplots(figsize=(4.2, 4.2))
    PrecisionRecallDisplay.from_predictions(target, prob, ax=axes, name=model_name, pos_label=1)
    axes.axhline(target.mean(), linestyle="--", color="grey", label="chance (prevalence)")
    axes.set_xlabel("recall (inhibitory)")
    axes.set_ylabel("precision (inhibitory)")
    axes.set_ylim(0, 1.02)
    axes.set_title("Precision-recall, test split")
    axes.legend(loc="lower left")
    save_figure(figure, path)


def plot_reliability(table: pd.DataFrame, ece: float, path: Path, model_name: str) -> None:
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
    save_figure(figure, path)


def _epoch_axis(axes: plt.Axes, epochs: pd.Series) -> None:
    """Whole-number epoch ticks; one epoch gets a single tick, not fractional ones."""
    if len(epochs) <= 12:
        axes.set_xticks(epochs.astype(int).tolist())
        axes.set_xlim(epochs.min() - 0.5, epochs.max() + 0.5)
    else:
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch")


def plot_history(history_path: str | Path | None, path: Path, model_name: str) -> None:
    """Loss (train and val) and val balanced accuracy per epoch; points when there is one epoch.
    The best epoch (highest val balanced accuracy, whose weights training keeps) is marked."""
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
        if history.get("val_balanced_accuracy", pd.Series(dtype=float)).notna().any():
            best = history.loc[history["val_balanced_accuracy"].idxmax(), "epoch"]
            for axes in (loss_axes, score_axes):
                axes.axvline(best, linestyle=":", color="black", label=f"best epoch ({best})")
        for axes in (loss_axes, score_axes):
            _epoch_axis(axes, history["epoch"])
            if axes.get_legend_handles_labels()[0]:
                axes.legend(fontsize="small")
    loss_axes.set_ylabel("loss")
    score_axes.set_ylabel("balanced accuracy")
    figure.suptitle(model_name)
    save_figure(figure, path)


def plot_synapses_needed(curves: dict[str, pd.DataFrame], path: Path, title: str) -> None:
    """Neuron-level balanced accuracy against the synapses a call is made from, one curve per
    model (name -> :func:`synapse_ei.evaluation.sufficiency.synapses_needed` table), with its
    interval band; the ``all`` point is drawn apart at the right."""
    figure, axes = plt.subplots(figsize=(5.6, 4.0))
    ks = sorted({int(k) for curve in curves.values() for k in curve["k"] if k != "all"}) or [1]
    at_all = ks[-1] * 2  # where the "all" stars stand, right of the largest k
    for name, curve in curves.items():
        finite = curve[(curve["k"] != "all") & curve["balanced_accuracy"].notna()]
        k = finite["k"].astype(int)
        line, = axes.plot(k, finite["balanced_accuracy"], marker="o", label=name)
        axes.fill_between(k, finite["ci_low"].astype(float), finite["ci_high"].astype(float),
                          alpha=0.15, color=line.get_color())
        every = curve[curve["k"] == "all"]["balanced_accuracy"].astype(float)
        if not every.empty and np.isfinite(every.iloc[0]):
            axes.scatter([at_all], every, marker="*", s=90, color=line.get_color())
    axes.axhline(0.5, linestyle="--", color="grey", label="chance")
    axes.set_xscale("log")
    axes.set_xticks([*ks, at_all], [*map(str, ks), "all"])
    axes.minorticks_off()
    axes.set_xlabel("synapses per call, k (star: all of the neuron's test synapses)")
    axes.set_ylabel("neuron balanced accuracy (tuned threshold)")
    axes.set_ylim(0, 1.05)
    axes.set_title(title)
    axes.legend(fontsize="small", loc="lower right")
    save_figure(figure, path)


BREAKDOWN_TITLES = {"cell_type": "presynaptic cell type", "synapse_size": "synapse size",
                    "depth_um": "depth (µm)"}


def plot_breakdown(table: pd.DataFrame, path: Path, model_name: str) -> None:
    """Neuron recall per cell type, synapse-size bin and depth bin (one panel each), per true
    class, with 95% Wilson intervals over neurons (the neurons and synapses behind each bar are
    in the table beside it)."""
    groupings = list(dict.fromkeys(table["grouping"])) or ["cell_type"]
    figure, panels = plt.subplots(1, len(groupings), figsize=(4.6 * len(groupings), 3.8),
                                  squeeze=False)
    for axes, grouping in zip(panels[0], groupings):
        rows = table[table["grouping"] == grouping]
        groups = list(dict.fromkeys(rows["group"]))
        series = {}
        for label in LABELS:
            of_label = rows[rows["label"] == label].set_index("group").reindex(groups)
            series[label] = (of_label["neuron_recall"], of_label["ci_low"], of_label["ci_high"])
        interval_bars(axes, groups, series)
        axes.tick_params(axis="x", labelrotation=35, labelsize="small")
        axes.axhline(0.5, linestyle="--", color="grey")
        axes.set_ylim(0, 1.1)
        axes.set_title(BREAKDOWN_TITLES.get(grouping, grouping))
    panels[0][0].set_ylabel("neuron recall (tuned threshold)")
    panels[0][-1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.suptitle(f"{model_name}: which test neurons are called right")
    save_figure(figure, path)
