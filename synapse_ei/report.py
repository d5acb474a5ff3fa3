"""One table and one figure comparing every model's test metrics."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are files; no display on a cluster node

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from synapse_ei.errors import DataError  # noqa: E402
from synapse_ei.io import atomic_path, read_json, write_text  # noqa: E402

SUMMARY_COLUMNS = [
    "model",
    "architecture",
    "input",
    "accuracy",
    "balanced_accuracy",
    "balanced_accuracy_ci_low",
    "balanced_accuracy_ci_high",
    "roc_auc",
    "roc_auc_ci_low",
    "roc_auc_ci_high",
    "pr_auc",
    "tuned_threshold",
    "tuned_balanced_accuracy",
    "n_test_synapses",
    "n_test_neurons",
]


def _row(model: str, metrics: dict, path: str | Path) -> dict:
    try:
        test = metrics["test"]
        bootstrap = metrics["bootstrap"]
        tuned = metrics["tuned_threshold"]
        counts = metrics["counts"]["test"]
        return {
            "model": model,
            "architecture": metrics.get("architecture"),
            "input": metrics.get("input"),
            "accuracy": test["accuracy"],
            "balanced_accuracy": test["balanced_accuracy"],
            "balanced_accuracy_ci_low": bootstrap["balanced_accuracy"]["ci_low"],
            "balanced_accuracy_ci_high": bootstrap["balanced_accuracy"]["ci_high"],
            "roc_auc": test["roc_auc"],
            "roc_auc_ci_low": bootstrap["roc_auc"]["ci_low"],
            "roc_auc_ci_high": bootstrap["roc_auc"]["ci_high"],
            "pr_auc": test["pr_auc"],
            "tuned_threshold": tuned["threshold"],
            "tuned_balanced_accuracy": tuned["test"]["balanced_accuracy"],
            "n_test_synapses": counts["synapses"]["total"],
            "n_test_neurons": counts["neurons"]["total"],
        }
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


def write_summary(table: pd.DataFrame, csv_path: str | Path, markdown_path: str | Path) -> None:
    """Write the summary as CSV (every column, full precision) and as a readable Markdown table."""
    with atomic_path(csv_path) as tmp:
        table.to_csv(tmp, index=False)
    header = [
        "model",
        "architecture",
        "input",
        "accuracy",
        "balanced accuracy [95% CI]",
        "ROC-AUC [95% CI]",
        "PR-AUC",
        "tuned threshold",
        "balanced accuracy (tuned)",
        "test synapses",
        "test neurons",
    ]
    rows = [
        [
            str(record["model"]),
            _number(record["architecture"]),
            _number(record["input"]),
            _number(record["accuracy"]),
            _with_ci(
                record["balanced_accuracy"],
                record["balanced_accuracy_ci_low"],
                record["balanced_accuracy_ci_high"],
            ),
            _with_ci(record["roc_auc"], record["roc_auc_ci_low"], record["roc_auc_ci_high"]),
            _number(record["pr_auc"]),
            _number(record["tuned_threshold"]),
            _number(record["tuned_balanced_accuracy"]),
            _number(record["n_test_synapses"]),
            _number(record["n_test_neurons"]),
        ]
        for record in table.to_dict("records")
    ]
    text = (
        "# Model comparison (test split)\n\n"
        "Sorted by balanced accuracy; intervals are 95% bootstrap intervals over presynaptic "
        "neurons. Inhibitory is the positive class.\n\n" + markdown_table(header, rows)
    )
    write_text(markdown_path, text)


def summary_figure(table: pd.DataFrame, png_path: str | Path) -> None:
    """Bars of balanced accuracy and ROC-AUC per model, 95% bootstrap intervals; chance dashed."""
    models = table["model"].astype(str).tolist()
    positions = np.arange(len(models))
    width = 0.38
    figure, axes = plt.subplots(figsize=(max(4.5, 1.3 * len(models) + 2), 3.8))
    for offset, metric, name in (
        (-width / 2, "balanced_accuracy", "balanced accuracy"),
        (width / 2, "roc_auc", "ROC-AUC"),
    ):
        estimate = table[metric].to_numpy(dtype=float)
        low = table[f"{metric}_ci_low"].to_numpy(dtype=float)
        high = table[f"{metric}_ci_high"].to_numpy(dtype=float)
        # Missing intervals draw no bar; clip guards against an estimate outside its interval.
        errors = np.nan_to_num(np.clip([estimate - low, high - estimate], 0, None))
        axes.bar(positions + offset, estimate, width, yerr=errors, capsize=3, label=name)
    axes.axhline(0.5, linestyle="--", color="grey", label="chance")
    axes.set_xticks(positions, models, rotation=20, ha="right")
    axes.set_ylim(0, 1.05)
    axes.set_ylabel("test score")
    axes.legend(loc="lower right", fontsize="small")
    axes.set_title("Models on the test split (95% CI over neurons)")
    figure.tight_layout()
    with atomic_path(png_path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    plt.close(figure)
