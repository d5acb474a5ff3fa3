"""The comparison of every model: one table (CSV, Markdown, HTML) and figures."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are files; no display on a cluster node

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import PrecisionRecallDisplay, RocCurveDisplay  # noqa: E402

from synapse_ei.errors import DataError  # noqa: E402
from synapse_ei.outputs import atomic_path, read_json, write_text  # noqa: E402
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


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured Markdown table; '|' inside cells is escaped."""

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header), *map(line, rows)]) + "\n"


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
    "ECE [95% CI]": "expected_calibration_error",
    "test synapses": "n_test_synapses",
    "test neurons": "n_test_neurons",
}
SUMMARY_NOTE = (
    "Test split, sorted by balanced accuracy at threshold 0.5. Intervals are 95% bootstrap "
    "intervals over presynaptic neurons (not synapses). Inhibitory is the positive class; the "
    "tuned threshold maximises balanced accuracy on val. Neuron accuracy calls each test neuron "
    "from its synapses' mean probability. ECE: expected calibration error (lower is better)."
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
        body = shown.to_html(index=False, border=0, classes="summary", escape=True)
        write_text(
            html_path,
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            "<title>Model comparison (test split)</title>"
            "<style>body{font-family:sans-serif}table.summary{border-collapse:collapse}"
            "table.summary th,table.summary td{padding:4px 8px;border-bottom:1px solid #ccc;"
            "text-align:left}</style></head><body>\n"
            f"<h1>Model comparison (test split)</h1>\n<p>{html.escape(SUMMARY_NOTE)}</p>\n"
            f"{body}\n</body></html>\n",
        )


def summary_figure(table: pd.DataFrame, png_path: str | Path) -> None:
    """Bars of balanced accuracy, ROC-AUC and PR-AUC per model, 95% bootstrap intervals over
    neurons; chance dashed."""
    models = table["model"].astype(str).tolist()
    positions = np.arange(len(models))
    scores = (("balanced_accuracy", "balanced accuracy"), ("roc_auc", "ROC-AUC"),
              ("pr_auc", "PR-AUC"))
    width = 0.8 / len(scores)
    figure, axes = plt.subplots(figsize=(max(4.5, 1.6 * len(models) + 2), 3.8))
    for index, (metric, name) in enumerate(scores):
        estimate = table[metric].to_numpy(dtype=float)
        low = table[f"{metric}_ci_low"].to_numpy(dtype=float)
        high = table[f"{metric}_ci_high"].to_numpy(dtype=float)
        # Missing intervals draw no bar; clip guards against an estimate outside its interval.
        errors = np.nan_to_num(np.clip([estimate - low, high - estimate], 0, None))
        offset = (index - (len(scores) - 1) / 2) * width
        axes.bar(positions + offset, estimate, width, yerr=errors, capsize=3, label=name)
    axes.axhline(0.5, linestyle="--", color="grey", label="chance (balanced accuracy, ROC-AUC)")
    axes.set_xticks(positions, models, rotation=20, ha="right")
    axes.set_ylim(0, 1.05)
    axes.set_ylabel("test score")
    axes.legend(loc="lower right", fontsize="small")
    axes.set_title("Models on the test split (95% CI over neurons)")
    _save(figure, png_path)


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
    roc_axes.set_title("ROC, test split")
    roc_axes.legend(loc="lower right", fontsize="small")
    if prevalence is not None:
        pr_axes.axhline(prevalence, linestyle="--", color="grey", label="chance (prevalence)")
    pr_axes.set_title("Precision-recall, test split")
    pr_axes.set_ylim(0, 1.02)
    pr_axes.legend(loc="lower left", fontsize="small")
    _save(figure, png_path)


def _save(figure: plt.Figure, png_path: str | Path) -> None:
    figure.tight_layout()
    with atomic_path(png_path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    plt.close(figure)
