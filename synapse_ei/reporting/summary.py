"""The comparison of every model: one table (CSV, Markdown, HTML), figures, the synapses a
neuron call needs and the recall per cell type, side by side."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are files; no display on a cluster node

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import PrecisionRecallDisplay, RocCurveDisplay  # noqa: E402

from synapse_ei.errors import DataError  # noqa: E402
from synapse_ei.evaluation.breakdown import COLUMNS as BREAKDOWN_COLUMNS  # noqa: E402
from synapse_ei.evaluation.figures import plot_synapses_needed  # noqa: E402
from synapse_ei.evaluation.sufficiency import CURVE_COLUMNS  # noqa: E402
from synapse_ei.outputs import atomic_path, read_json, write_text  # noqa: E402
from synapse_ei.reporting.render import (  # noqa: E402
    interval_bars,
    markdown_table,
    save_figure,
    write_html,
)
from synapse_ei.tables import INHIBITORY  # noqa: E402

#: Summary column -> where it sits in metrics.json; each has ``_ci_low``/``_ci_high`` columns.
SCORES_WITH_INTERVALS = {
    "accuracy": ("test", "accuracy"),
    "balanced_accuracy": ("test", "balanced_accuracy"),
    "roc_auc": ("test", "roc_auc"),
    "pr_auc": ("test", "pr_auc"),
    "tuned_accuracy": ("tuned_threshold", "test", "accuracy"),
    "tuned_balanced_accuracy": ("tuned_threshold", "test", "balanced_accuracy"),
    "neuron_accuracy": ("neuron_level", "default_threshold", "accuracy"),
    "tuned_neuron_accuracy": ("neuron_level", "tuned_threshold", "accuracy"),
    "neuron_balanced_accuracy": ("neuron_level", "default_threshold", "balanced_accuracy"),
    "tuned_neuron_balanced_accuracy": ("neuron_level", "tuned_threshold", "balanced_accuracy"),
    "expected_calibration_error": ("calibration", "expected_calibration_error"),
}
SUMMARY_COLUMNS = [
    "model",
    "architecture",
    "input",
    "tta",
    *[
        column
        for score in SCORES_WITH_INTERVALS
        for column in (score, f"{score}_ci_low", f"{score}_ci_high")
    ],
    "tuned_threshold",
    "n_test_synapses",
    "n_test_neurons",
]


def _lookup(metrics: Mapping, keys: tuple[str, ...]) -> tuple[float, float, float]:
    """The score at ``keys`` and its interval, read from the ``ci95`` beside it."""
    *parent_keys, name = keys
    parent = metrics
    for key in parent_keys:
        parent = parent[key]
    interval = parent["ci95"][name]
    return parent[name], interval["ci_low"], interval["ci_high"]


def _row(model: str, metrics: dict, path: str | Path) -> dict:
    try:
        counts = metrics["counts"]["test"]
        row = {
            "model": model,
            "architecture": metrics.get("architecture"),
            "input": metrics.get("input"),
            "tta": metrics.get("tta"),
            "tuned_threshold": metrics["tuned_threshold"]["threshold"],
            "n_test_synapses": counts["synapses"]["total"],
            "n_test_neurons": counts["neurons"]["total"],
        }
        for score, keys in SCORES_WITH_INTERVALS.items():
            estimate, low, high = _lookup(metrics, keys)
            row.update({score: estimate, f"{score}_ci_low": low, f"{score}_ci_high": high})
        return row
    except (KeyError, TypeError) as error:
        raise DataError(
            f"{path}: metrics of model '{model}' lack key {error}; rerun its evaluate stage."
        ) from None


def summarize(metrics_paths: Mapping[str, str | Path]) -> pd.DataFrame:
    """One row per model (name -> metrics.json), sorted by test balanced accuracy, best first."""
    rows = [_row(model, read_json(path), path) for model, path in metrics_paths.items()]
    table = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    table = table.sort_values("balanced_accuracy", ascending=False, kind="stable")
    return table.reset_index(drop=True)


def _number(value: object, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}f}"
    return str(value)


def _with_ci(estimate: float, low: float, high: float) -> str:
    if any(value is None or math.isnan(value) for value in (low, high)):
        return _number(estimate)
    return f"{_number(estimate)} [{_number(low)}, {_number(high)}]"


#: Readable columns of the Markdown and HTML tables: header -> score (shown with its interval)
#: or plain column.
DISPLAY_COLUMNS = {
    "model": "model",
    "architecture": "architecture",
    "input": "input",
    "TTA": "tta",
    "accuracy [95% CI]": "accuracy",
    "balanced accuracy [95% CI]": "balanced_accuracy",
    "ROC-AUC [95% CI]": "roc_auc",
    "PR-AUC [95% CI]": "pr_auc",
    "tuned threshold": "tuned_threshold",
    "balanced accuracy, tuned [95% CI]": "tuned_balanced_accuracy",
    "neuron accuracy [95% CI]": "neuron_accuracy",
    "neuron accuracy, tuned [95% CI]": "tuned_neuron_accuracy",
    "neuron balanced accuracy [95% CI]": "neuron_balanced_accuracy",
    "neuron balanced accuracy, tuned [95% CI]": "tuned_neuron_balanced_accuracy",
    "ECE [95% CI]": "expected_calibration_error",
    "test synapses": "n_test_synapses",
    "test neurons": "n_test_neurons",
}
SUMMARY_NOTE = (
    "Test split, sorted by balanced accuracy at threshold 0.5. Synapse-level intervals are 95% "
    "bootstrap intervals over presynaptic neurons (not synapses). Neuron accuracy and neuron "
    "balanced accuracy call each test neuron from its synapses' mean probability; their "
    "intervals are 95% Wilson score intervals over neurons (balanced accuracy: the mean of the "
    "two classes' bounds), honest with few neurons. Neuron accuracy can equal calling every "
    "neuron excitatory: read it beside the balanced one. Inhibitory is the positive class; the "
    "tuned threshold maximises balanced accuracy on val. ECE: expected calibration error "
    "(lower is better)."
)


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The summary as readable strings: three decimals, each score with its interval."""
    rows = []
    for record in table.to_dict("records"):
        row = {}
        for header, column in DISPLAY_COLUMNS.items():
            if column in SCORES_WITH_INTERVALS:
                row[header] = _with_ci(
                    record[column], record[f"{column}_ci_low"], record[f"{column}_ci_high"]
                )
            else:
                row[header] = _number(record[column])
        rows.append(row)
    return pd.DataFrame(rows, columns=list(DISPLAY_COLUMNS))


def write_summary(
    table: pd.DataFrame,
    csv_path: str | Path,
    markdown_path: str | Path,
    html_path: str | Path | None = None,
) -> None:
    """Write the summary as CSV (every column, full precision) and as readable Markdown and
    HTML tables (scores with their intervals)."""
    with atomic_path(csv_path) as tmp:
        table.to_csv(tmp, index=False)
    shown = display_table(table)
    text = (
        "# Model comparison (test split)\n\n"
        + SUMMARY_NOTE
        + "\n\n"
        + markdown_table(list(shown.columns), shown.values.tolist())
    )
    write_text(markdown_path, text)
    if html_path is not None:
        write_html(html_path, "Model comparison (test split)", SUMMARY_NOTE, {None: shown})


def summary_figure(table: pd.DataFrame, png_path: str | Path) -> None:
    """Bars of balanced accuracy, ROC-AUC and PR-AUC per model, 95% bootstrap intervals over
    neurons; chance dashed."""
    models = table["model"].astype(str).tolist()
    scores = (("balanced_accuracy", "balanced accuracy"), ("roc_auc", "ROC-AUC"),
              ("pr_auc", "PR-AUC"))
    figure, axes = plt.subplots(figsize=(max(4.5, 1.6 * len(models) + 2) + 1.8, 3.8))
    interval_bars(axes, models, {
        name: (table[metric], table[f"{metric}_ci_low"], table[f"{metric}_ci_high"])
        for metric, name in scores
    })
    axes.axhline(0.5, linestyle="--", color="grey", label="chance (balanced accuracy, ROC-AUC)")
    axes.tick_params(axis="x", labelrotation=20)
    axes.set_ylim(0, 1.05)
    axes.set_ylabel("test score")
    # Outside the axes: inside, the legend covered a bar.
    axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    axes.set_title("Models on the test split (95% CI over neurons)")
    save_figure(figure, png_path)


def comparison_curves(predictions_paths: Mapping[str, str | Path], png_path: str | Path) -> None:
    """Every model's test ROC and precision-recall curves overlaid (name -> predictions.parquet)."""
    figure, (roc_axes, pr_axes) = plt.subplots(1, 2, figsize=(9, 4.2))
    prevalence = None
    for model, path in predictions_paths.items():
        predictions = pd.read_parquet(path, columns=["split", "label", "prob_inhibitory"])
        test = predictions[predictions["split"] == "test"]
        if test["label"].nunique() < 2:
            raise DataError(
                f"{path}: the test predictions of model '{model}' hold one class; rerun its "
                "evaluate stage."
            )
        target = (test["label"] == INHIBITORY).to_numpy(dtype=int)
        prob = test["prob_inhibitory"].to_numpy(dtype=float)
        RocCurveDisplay.from_predictions(target, prob, ax=roc_axes, name=model, pos_label=1)
        PrecisionRecallDisplay.from_predictions(target, prob, ax=pr_axes, name=model,
                                                pos_label=1)
        prevalence = target.mean()
    roc_axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    # Set here: sklearn's labels append "(Positive label: 1)".
    roc_axes.set_xlabel("false positive rate (excitatory called inhibitory)")
    roc_axes.set_ylabel("true positive rate (inhibitory recall)")
    pr_axes.set_xlabel("recall (inhibitory)")
    pr_axes.set_ylabel("precision (inhibitory)")
    roc_axes.set_title("ROC, test split")
    roc_axes.legend(loc="lower right", fontsize="small")
    if prevalence is not None:
        pr_axes.axhline(prevalence, linestyle="--", color="grey", label="chance (prevalence)")
    pr_axes.set_title("Precision-recall, test split")
    pr_axes.set_ylim(0, 1.02)
    pr_axes.legend(loc="lower left", fontsize="small")
    save_figure(figure, png_path)


def _analysis_tables(model: str, metrics: Mapping, path: str | Path) -> tuple[pd.DataFrame, ...]:
    try:
        curve = pd.DataFrame(metrics["synapses_needed"]["curve"], columns=CURVE_COLUMNS)
        breakdown = pd.DataFrame(metrics["recall_breakdown"]["rows"], columns=BREAKDOWN_COLUMNS)
    except (KeyError, TypeError) as error:
        raise DataError(
            f"{path}: metrics of model '{model}' lack key {error}; rerun its evaluate stage."
        ) from None
    return curve, breakdown


def synapses_needed_table(curves: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Every model's synapses-per-call curve stacked (a ``model`` column first)."""
    return pd.concat([curve.assign(model=model) for model, curve in curves.items()],
                     ignore_index=True).pipe(lambda t: t[["model", *t.columns[:-1]]])


def cell_type_table(breakdowns: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Neuron recall per fine cell type and true class (rows) and model (columns: the recall
    with its interval, and the neurons behind it); blank where a model has no such neuron."""
    frames = []
    for model, breakdown in breakdowns.items():
        rows = breakdown[breakdown["grouping"] == "cell_type"]
        frames.append(pd.DataFrame({
            "true class": rows["label"], "cell type": rows["group"], "model": model,
            "recall": [_with_ci(row.neuron_recall, row.ci_low, row.ci_high)
                       for row in rows.itertuples()],
            "neurons": rows["n_neurons"].astype(int).astype(str),
        }))
    long = pd.concat(frames, ignore_index=True)
    if long.empty:
        return pd.DataFrame(columns=["cell type", "true class"])
    wide = long.pivot(
        index=["true class", "cell type"], columns="model", values=["recall", "neurons"])
    table = pd.DataFrame(index=wide.index)
    for model in breakdowns:
        if ("recall", model) in wide.columns:
            table[f"{model} neuron recall [95% CI]"] = wide[("recall", model)]
            table[f"{model} neurons"] = wide[("neurons", model)]
    table = table.fillna("").reset_index()
    return table[["cell type", "true class", *table.columns[2:]]]


def run_summary(models: Sequence[str], metrics_paths: Sequence[str | Path],
                predictions_paths: Sequence[str | Path], out: Mapping[str, str | Path]) -> None:
    """The summary stage: ``out`` names the files (csv, markdown, html, figure, curves,
    synapses_needed, synapses_needed_table, cell_types, cell_types_markdown)."""
    metrics_by_model = dict(zip(models, metrics_paths, strict=True))
    table = summarize(metrics_by_model)
    write_summary(table, out["csv"], out["markdown"], out["html"])
    summary_figure(table, out["figure"])
    comparison_curves(dict(zip(models, predictions_paths, strict=True)), out["curves"])
    analyses = {model: _analysis_tables(model, read_json(path), path)
                for model, path in metrics_by_model.items()}
    curves = {model: tables[0] for model, tables in analyses.items()}
    plot_synapses_needed(curves, Path(out["synapses_needed"]),
                         "Synapses per neuron call, test split")
    with atomic_path(out["synapses_needed_table"]) as tmp:
        synapses_needed_table(curves).to_csv(tmp, index=False)
    types = cell_type_table({model: tables[1] for model, tables in analyses.items()})
    with atomic_path(out["cell_types"]) as tmp:
        types.to_csv(tmp, index=False)
    write_text(out["cell_types_markdown"],
               "# Neuron recall per presynaptic cell type (test split, tuned threshold)\n\n"
               "95% Wilson score intervals over neurons.\n\n"
               + markdown_table(list(types.columns), types.values.tolist()))
