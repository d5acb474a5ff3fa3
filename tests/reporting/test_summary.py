"""The model comparison: sorted by balanced accuracy, a well-formed Markdown table, a figure."""

from __future__ import annotations

from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from synapse_ei.errors import DataError
from synapse_ei.evaluation.evaluate import evaluate_predictions
from synapse_ei.outputs import write_json
from synapse_ei.reporting.summary import (
    cell_type_table,
    comparison_curves,
    run_summary,
    SCORES_WITH_INTERVALS,
    summarize,
    summary_figure,
    write_summary,
)


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
    write_summary(table, tmp_path / "models.csv", tmp_path / "models.md", tmp_path / "models.html")
    text = (tmp_path / "models.md").read_text()
    lines = [line for line in text.splitlines() if line.startswith("|")]
    assert len(lines) == 2 + len(table)
    widths = {line.count(" | ") for line in lines[:1] + lines[2:]}
    assert widths == {16}  # 17 cells in every row
    assert set(lines[1].replace("|", "").replace("-", "")) == set()
    assert lines[2].startswith("| strong |") and "[" in lines[2]
    assert pd.read_csv(tmp_path / "models.csv")["model"].tolist() == ["strong", "middle", "weak"]
    header, *body = html_cells((tmp_path / "models.html").read_text())
    assert header == [cell.strip() for cell in lines[0].strip("|").split(" | ")]
    assert [row[0] for row in body] == ["strong", "middle", "weak"]
    assert body[0][4] == lines[2].split(" | ")[4]  # the same accuracy [CI] cell as the Markdown


def html_cells(text: str) -> list[list[str]]:
    """The cell texts of each row of the (single) table in an HTML page."""

    class Cells(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.rows: list[list[str]] = []
            self.cell: list[str] | None = None

        def handle_starttag(self, tag, attrs):
            if tag == "tr":
                self.rows.append([])
            elif tag in ("td", "th"):
                self.cell = []

        def handle_endtag(self, tag):
            if tag in ("td", "th") and self.cell is not None:
                self.rows[-1].append("".join(self.cell).strip())
                self.cell = None

        def handle_data(self, data):
            if self.cell is not None:
                self.cell.append(data)

    parser = Cells()
    parser.feed(text)
    return parser.rows


def test_every_score_carries_its_interval(metrics_paths):
    table = summarize(metrics_paths)
    for score in SCORES_WITH_INTERVALS:
        assert (table[f"{score}_ci_low"] <= table[f"{score}_ci_high"]).all(), score
    # Separation makes the strong model better calibrated at the neuron level too.
    assert table["neuron_accuracy"].iloc[0] >= table["neuron_accuracy"].iloc[-1]


def test_summary_figures_are_written(metrics_paths, tmp_path):
    summary_figure(summarize(metrics_paths), tmp_path / "models.png")
    assert (tmp_path / "models.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    predictions_paths = {name: path.parent / "predictions.parquet"
                         for name, path in metrics_paths.items()}
    comparison_curves(predictions_paths, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_incomplete_metrics_are_named(tmp_path):
    write_json(tmp_path / "metrics.json", {"model": "x", "test": {}})
    with pytest.raises(DataError, match="metrics.json"):
        summarize({"x": tmp_path / "metrics.json"})


def test_neuron_balanced_accuracy_shows_what_neuron_accuracy_hides(tmp_path):
    """Calling every neuron excitatory scores the excitatory share as neuron accuracy but 0.5
    balanced: the summary carries both, each with an interval that does not collapse."""
    frame = predictions(0.3, seed=2).assign(prob_inhibitory=0.1)
    evaluate_predictions(frame, None, "all_excitatory", tmp_path / "m", n_resamples=50)
    row = summarize({"all_excitatory": tmp_path / "m" / "metrics.json"}).iloc[0]
    test = frame[frame["split"] == "test"]
    excitatory_share = (test.groupby("pre_pt_root_id")["label"].first() == "excitatory").mean()
    assert row["neuron_accuracy"] == pytest.approx(excitatory_share)
    assert row["neuron_balanced_accuracy"] == pytest.approx(0.5)
    assert row["neuron_balanced_accuracy_ci_low"] < 0.5 < row["neuron_balanced_accuracy_ci_high"]


def test_cell_type_table_puts_models_side_by_side():
    def breakdown(recall: float, neurons: int) -> pd.DataFrame:
        return pd.DataFrame({
            "grouping": ["cell_type", "cell_type", "synapse_size"],
            "group": ["MC", "23P", "[1, 2]"], "label": ["inhibitory", "excitatory", "inhibitory"],
            "n_neurons": [neurons, 4, 9], "n_synapses": [10, 40, 90],
            "neuron_recall": [recall, 1.0, 0.5], "ci_low": [0.1, 0.5, 0.2],
            "ci_high": [0.9, 1.0, 0.8], "synapse_recall": [0.3, 0.9, 0.5],
        })

    table = cell_type_table({"a": breakdown(0.25, 4), "b": breakdown(0.5, 2).iloc[:1]})
    assert table[["cell type", "true class"]].values.tolist() == [
        ["23P", "excitatory"], ["MC", "inhibitory"]]
    assert table["a neuron recall [95% CI]"].tolist() == ["1.000 [0.500, 1.000]",
                                                          "0.250 [0.100, 0.900]"]
    assert table["b neuron recall [95% CI]"].tolist() == ["", "0.500 [0.100, 0.900]"]
    assert table["b neurons"].tolist() == ["", "2"]


def test_run_summary_writes_the_comparison_of_the_analyses(metrics_paths, tmp_path):
    names = list(metrics_paths)
    out = {name: tmp_path / file for name, file in (
        ("csv", "models.csv"), ("markdown", "models.md"), ("html", "models.html"),
        ("figure", "models.png"), ("curves", "curves.png"),
        ("synapses_needed", "synapses_needed.png"),
        ("synapses_needed_table", "synapses_needed.csv"),
        ("cell_types", "recall_by_cell_type.csv"),
        ("cell_types_markdown", "recall_by_cell_type.md"))}
    run_summary(names, [metrics_paths[n] for n in names],
                [metrics_paths[n].parent / "predictions.parquet" for n in names], out)
    curves = pd.read_csv(out["synapses_needed_table"])
    assert sorted(set(curves["model"])) == sorted(names)
    strong = curves[curves["model"] == "strong"].set_index("k")
    assert strong.loc["all", "n_neurons"] == 12
    assert strong.loc["5", "n_neurons"] == 12 and "10" in strong.index
    assert out["synapses_needed"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
