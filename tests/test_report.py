"""The model comparison: sorted by balanced accuracy, a well-formed Markdown table, a figure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from synapse_ei.errors import DataError
from synapse_ei.evaluate import evaluate_predictions
from synapse_ei.io import write_json
from synapse_ei.report import markdown_table, summarize, summary_figure, write_summary


def predictions(separation: float, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for neuron in range(24):
        label = "inhibitory" if neuron % 3 == 0 else "excitatory"
        centre = 0.5 + (separation if label == "inhibitory" else -separation)
        for k in range(5):
            prob = float(np.clip(centre + rng.normal(0, 0.2), 0, 1))
            split = "val" if neuron % 2 else "test"
            rows.append((neuron * 10 + k, 1000 + neuron, split, label, prob))
    return pd.DataFrame(rows, columns=["id", "pre_pt_root_id", "split", "label", "prob_inhibitory"])


@pytest.fixture(scope="module")
def metrics_paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    paths = {}
    for name, separation in (("weak", 0.02), ("strong", 0.3), ("middle", 0.1)):
        evaluate_predictions(predictions(separation, seed=1), None, name, root / name,
                             details={"architecture": name, "input": "2d"}, n_resamples=200)
        paths[name] = root / name / "metrics.json"
    return paths


def test_summary_is_sorted_by_balanced_accuracy(metrics_paths):
    table = summarize(metrics_paths)
    assert list(table["model"]) == ["strong", "middle", "weak"]
    assert table["balanced_accuracy"].is_monotonic_decreasing
    assert (table["balanced_accuracy_ci_low"] <= table["balanced_accuracy_ci_high"]).all()
    assert (table["n_test_neurons"] == 12).all() and (table["n_test_synapses"] == 60).all()
    assert list(table["architecture"]) == ["strong", "middle", "weak"]


def test_markdown_is_a_well_formed_table(metrics_paths, tmp_path):
    table = summarize(metrics_paths)
    write_summary(table, tmp_path / "models.csv", tmp_path / "models.md")
    text = (tmp_path / "models.md").read_text()
    lines = [line for line in text.splitlines() if line.startswith("|")]
    assert len(lines) == 2 + len(table)
    widths = {line.count(" | ") for line in lines[:1] + lines[2:]}
    assert widths == {10}  # 11 cells in every row
    assert set(lines[1].replace("|", "").replace("-", "")) == set()
    assert lines[2].startswith("| strong |") and "[" in lines[2]
    assert pd.read_csv(tmp_path / "models.csv")["model"].tolist() == ["strong", "middle", "weak"]


def test_markdown_escapes_pipes():
    text = markdown_table(["a", "b"], [["x|y", "1"]])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| x\\|y | 1 |"]


def test_summary_figure_is_written(metrics_paths, tmp_path):
    summary_figure(summarize(metrics_paths), tmp_path / "models.png")
    assert (tmp_path / "models.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_incomplete_metrics_are_named(tmp_path):
    write_json(tmp_path / "metrics.json", {"model": "x", "test": {}})
    with pytest.raises(DataError, match="metrics.json"):
        summarize({"x": tmp_path / "metrics.json"})
