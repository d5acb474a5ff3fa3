"""One model's evaluation: the files it writes, the threshold tuned on val only, and the
predictions it refuses."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from evaluation_helpers import make_predictions
from synapse_ei.errors import DataError
from synapse_ei.evaluation.evaluate import evaluate_predictions
from synapse_ei.evaluation.metrics import compute_metrics, tune_threshold


def test_threshold_is_tuned_on_val_only(tmp_path):
    predictions = make_predictions()
    first = evaluate_predictions(predictions, None, "m", tmp_path / "a", n_resamples=50)
    changed = predictions.copy()
    test = changed.split == "test"
    changed.loc[test, "prob_inhibitory"] = 1 - changed.loc[test, "prob_inhibitory"]
    second = evaluate_predictions(changed, None, "m", tmp_path / "b", n_resamples=50)
    assert first["tuned_threshold"]["threshold"] == second["tuned_threshold"]["threshold"]
    assert first["test"]["roc_auc"] != second["test"]["roc_auc"]

    val = predictions[predictions.split == "val"]
    threshold = first["tuned_threshold"]["threshold"]
    assert threshold == tune_threshold(val["label"], val["prob_inhibitory"])
    best = compute_metrics(val["label"], val["prob_inhibitory"], threshold)["balanced_accuracy"]
    for other in np.linspace(0.05, 0.95, 19):
        assert compute_metrics(val["label"], val["prob_inhibitory"], other)[
            "balanced_accuracy"
        ] <= best + 1e-12


def test_evaluate_writes_every_file(tmp_path):
    history = tmp_path / "history.csv"
    pd.DataFrame(
        {"epoch": [1, 2, 3], "train_loss": [0.7, 0.6, 0.5], "val_loss": [0.7, 0.65, 0.6],
         "val_balanced_accuracy": [0.5, 0.6, 0.7]}
    ).to_csv(history, index=False)
    predictions = make_predictions()
    metrics = evaluate_predictions(predictions, history, "cnn2d", tmp_path / "eval",
                                   details={"architecture": "cnn2d"}, n_resamples=100)
    for name in ("metrics.json", "predictions.parquet", "confusion_matrix.png", "roc.png",
                 "pr.png", "reliability.png", "training_curves.png"):
        assert (tmp_path / "eval" / name).stat().st_size > 0
    on_disk = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert on_disk["model"] == "cnn2d" and on_disk["architecture"] == "cnn2d"
    assert on_disk["test"]["accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert on_disk["tuned_threshold"]["chosen_on"] == "val"
    for key in ("accuracy", "balanced_accuracy", "roc_auc", "pr_auc"):
        assert 0 <= metrics["test"][key] <= 1
    # Every headline number, at both thresholds, carries its interval.
    for scores in (on_disk["test"], on_disk["tuned_threshold"]["test"]):
        for key in ("accuracy", "balanced_accuracy", "roc_auc", "pr_auc"):
            low, high = scores["ci95"][key]["ci_low"], scores["ci95"][key]["ci_high"]
            assert 0 <= low <= high <= 1, (key, low, high)
    for name in ("default_threshold", "tuned_threshold"):
        neuron_scores = on_disk["neuron_level"][name]
        assert neuron_scores["n_neurons"] == 15
        assert neuron_scores["ci95"]["accuracy"]["ci_low"] <= neuron_scores["accuracy"] + 1e-9
        assert 0 < on_disk["bootstrap"]["n_used"][name] <= 100
    calibration = on_disk["calibration"]
    assert 0 <= calibration["expected_calibration_error"] <= 1
    assert sum(row["n_synapses"] for row in calibration["bins"]) == 150
    assert on_disk["bootstrap"]["unit"] == "presynaptic neuron"
    counts = metrics["counts"]["test"]
    assert counts["neurons"]["total"] == 15 and counts["synapses"]["total"] == 150
    assert counts["neurons"]["inhibitory"] == 5
    written = pd.read_parquet(tmp_path / "eval" / "predictions.parquet")
    assert len(written) == len(predictions)


def test_one_row_history_is_drawn(tmp_path):
    history = tmp_path / "history.csv"
    pd.DataFrame([{"epoch": 1, "train_loss": 0.5, "val_loss": 0.6, "val_balanced_accuracy": 0.7}]
                 ).to_csv(history, index=False)
    evaluate_predictions(make_predictions(), history, "connectivity", tmp_path / "eval",
                         n_resamples=20)
    assert (tmp_path / "eval" / "training_curves.png").stat().st_size > 0


def test_missing_test_split_is_refused(tmp_path):
    predictions = make_predictions()
    with pytest.raises(DataError, match="no test synapses"):
        evaluate_predictions(predictions[predictions.split == "val"], None, "m", tmp_path)


def test_single_class_test_split_is_named(tmp_path):
    predictions = make_predictions()
    predictions = predictions[(predictions.split == "val") | (predictions.label == "excitatory")]
    with pytest.raises(DataError, match="only excitatory"):
        evaluate_predictions(predictions, None, "m", tmp_path)
    assert not (tmp_path / "metrics.json").exists()


def test_probabilities_outside_unit_interval_are_refused(tmp_path):
    predictions = make_predictions()
    predictions.loc[3, "prob_inhibitory"] = 1.5
    with pytest.raises(DataError, match="row 3"):
        evaluate_predictions(predictions, None, "m", tmp_path)


def test_a_label_outside_the_two_classes_is_refused_naming_its_row(tmp_path):
    predictions = make_predictions()
    predictions.loc[4, "label"] = "unknown"
    with pytest.raises(DataError, match=r"'label' row 4 holds 'unknown'.*Rerun the evaluate"):
        evaluate_predictions(predictions, None, "m", tmp_path)


def test_evaluation_writes_the_researchers_analyses(tmp_path):
    """The k-synapse curve and the recall breakdown reach metrics.json, their CSVs and
    figures, at the tuned threshold, with cell types, sizes and depths from the split table."""
    from synapse_ei.evaluation.breakdown import recall_breakdown, synapse_context
    from synapse_ei.evaluation.evaluate import Analyses
    from synapse_ei.evaluation.sufficiency import synapses_needed

    predictions = make_predictions()
    rng = np.random.default_rng(5)
    split_table = predictions[["id"]].assign(
        pre_cell_type=np.where(predictions["label"] == "inhibitory", "MC", "23P"),
        size=rng.integers(50, 900, len(predictions)),
        ctr_pt_position_y=rng.integers(100_000, 200_000, len(predictions)),
    )
    analyses = Analyses(synapses_per_call=(1, 3), synapse_draws=40, breakdown_bins=3, seed=2)
    metrics = evaluate_predictions(predictions, None, "m", tmp_path, n_resamples=50,
                                   analyses=analyses, split_table=split_table,
                                   position_resolution=(4, 4, 40))
    threshold = metrics["tuned_threshold"]["threshold"]
    test = predictions[predictions["split"] == "test"]
    direct = synapses_needed(test["label"], test["prob_inhibitory"].to_numpy(),
                             test["pre_pt_root_id"].to_numpy(), threshold, (1, 3), 40, 2)
    written = pd.read_csv(tmp_path / "synapses_needed.csv", dtype={"k": str})
    pd.testing.assert_frame_equal(written, direct, check_dtype=False)
    assert [row["k"] for row in metrics["synapses_needed"]["curve"]] == ["1", "3", "all"]
    full = metrics["synapses_needed"]["curve"][-1]
    neuron = metrics["neuron_level"]["tuned_threshold"]
    assert full["balanced_accuracy"] == pytest.approx(neuron["balanced_accuracy"])
    breakdown = pd.read_csv(tmp_path / "recall_breakdown.csv")
    expected = recall_breakdown(synapse_context(test, split_table, (4, 4, 40), "t"), threshold, 3)
    pd.testing.assert_frame_equal(breakdown, expected, check_dtype=False)
    assert set(breakdown["grouping"]) == {"cell_type", "synapse_size", "depth_um"}
    for name in ("synapses_needed.png", "recall_breakdown.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_a_perfect_model_keeps_an_honest_neuron_interval(tmp_path):
    predictions = make_predictions(n_neurons=12, per_neuron=3)
    predictions["prob_inhibitory"] = np.where(predictions["label"] == "inhibitory", 0.9, 0.1)
    metrics = evaluate_predictions(predictions, None, "m", tmp_path, n_resamples=50)
    neuron = metrics["neuron_level"]["default_threshold"]
    assert neuron["accuracy"] == 1.0 and neuron["balanced_accuracy"] == 1.0
    # 6 test neurons, all right: the bootstrap said [1, 1]; Wilson says about [0.61, 1].
    assert neuron["ci95"]["accuracy"]["ci_low"] == pytest.approx(0.6097, abs=1e-3)
    assert neuron["ci95"]["balanced_accuracy"]["ci_low"] < 0.6


def test_training_curves_tick_whole_epochs_and_mark_the_best(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from synapse_ei.evaluation import figures

    shown = {}

    def keep(figure, path):
        shown["axes"] = figure.axes
        plt.close(figure)

    monkeypatch.setattr(figures, "save_figure", keep)
    for epochs, scores, best in (([1], [0.7], 1), ([1, 2, 3], [0.6, 0.8, 0.7], 2)):
        history = tmp_path / "history.csv"
        pd.DataFrame({"epoch": epochs, "train_loss": 0.5, "val_loss": 0.6,
                      "val_balanced_accuracy": scores}).to_csv(history, index=False)
        figures.plot_history(history, tmp_path / "curves.png", "m")
        for axes in shown["axes"]:
            assert list(axes.get_xticks()) == epochs  # no fractional ticks for one epoch
            marks = [line for line in axes.get_lines() if line.get_label().startswith("best")]
            assert marks and marks[0].get_xdata()[0] == best
