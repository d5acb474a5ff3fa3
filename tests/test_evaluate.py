"""Test-split metrics: agree with scikit-learn, tune on val only, bootstrap over neurons."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    f1_score,
    roc_auc_score,
)

from synapse_ei.cutout.stacks import write_stack
from synapse_ei.errors import DataError
from synapse_ei.evaluation.bootstrap import bootstrap_over_neurons, _neuron_weighted_scores
from synapse_ei.evaluation.evaluate import evaluate_predictions
from synapse_ei.evaluation.gallery import gallery_examples, write_gallery
from synapse_ei.evaluation.metrics import (
    compute_metrics,
    expected_calibration_error,
    reliability_table,
    tune_threshold,
)
from synapse_ei.evaluation.neurons import neuron_level, neuron_table


def test_hand_checked_tiny_case():
    labels = ["excitatory", "excitatory", "excitatory", "inhibitory", "inhibitory"]
    prob = np.array([0.1, 0.6, 0.2, 0.9, 0.4])
    metrics = compute_metrics(labels, prob)
    # Called inhibitory: rows 1 and 3. TN=2, FP=1, FN=1, TP=1.
    assert metrics["confusion_matrix"] == [[2, 1], [1, 1]]
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert metrics["per_class"]["inhibitory"]["precision"] == pytest.approx(1 / 2)
    assert metrics["per_class"]["inhibitory"]["recall"] == pytest.approx(1 / 2)
    assert metrics["per_class"]["excitatory"]["recall"] == pytest.approx(2 / 3)
    # Pairs (inhibitory, excitatory) ranked correctly: 0.9 beats all 3, 0.4 beats 0.1 and 0.2.
    assert metrics["roc_auc"] == pytest.approx(5 / 6)
    assert metrics["confusion_matrix_order"] == ["excitatory", "inhibitory"]


def test_agrees_with_sklearn_on_random_inputs():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 2, 300)
    prob = np.clip(0.3 * target + rng.random(300) * 0.7, 0, 1)
    labels = np.where(target == 1, "inhibitory", "excitatory")
    metrics = compute_metrics(labels, prob, threshold=0.4)
    predicted = (prob >= 0.4).astype(int)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(target, predicted))
    assert metrics["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(target, predicted))
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(target, prob))
    assert metrics["pr_auc"] == pytest.approx(average_precision_score(target, prob))
    assert metrics["per_class"]["inhibitory"]["f1"] == pytest.approx(f1_score(target, predicted))
    assert metrics["per_class"]["excitatory"]["f1"] == pytest.approx(
        f1_score(target, predicted, pos_label=0)
    )
    assert np.sum(metrics["confusion_matrix"]) == 300


def test_single_class_is_refused():
    with pytest.raises(DataError, match="both classes"):
        compute_metrics(["excitatory"] * 3, np.array([0.1, 0.2, 0.3]))


def make_predictions(n_neurons: int = 30, per_neuron: int = 10, seed: int = 0) -> pd.DataFrame:
    """Neuron-level predictions: every synapse of a neuron shares its label and a noisy score."""
    rng = np.random.default_rng(seed)
    rows = []
    for neuron in range(n_neurons):
        label = "inhibitory" if neuron % 3 == 0 else "excitatory"
        split = "val" if neuron % 2 else "test"
        centre = 0.7 if label == "inhibitory" else 0.3
        for k in range(per_neuron):
            prob = float(np.clip(centre + rng.normal(0, 0.2), 0, 1))
            rows.append((neuron * 1000 + k, 864691135000000000 + neuron, split, label, prob))
    return pd.DataFrame(rows, columns=["id", "pre_pt_root_id", "split", "label", "prob_inhibitory"])


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


def test_bootstrap_resamples_neurons_not_synapses():
    """Duplicating every synapse leaves the interval alone; more neurons narrow it."""
    rng = np.random.default_rng(2)
    n_neurons = 12
    neuron_label = np.array(["inhibitory", "excitatory"] * (n_neurons // 2))
    neuron_prob = np.clip(np.where(neuron_label == "inhibitory", 0.65, 0.35)
                          + rng.normal(0, 0.2, n_neurons), 0, 1)

    def interval(per_neuron: int, copies: int = 1) -> dict:
        neuron = np.repeat(np.arange(n_neurons * copies), per_neuron)
        base = np.tile(np.arange(n_neurons), copies)
        return bootstrap_over_neurons(
            np.repeat(neuron_label[base], per_neuron),
            np.repeat(neuron_prob[base], per_neuron),
            neuron,
            n_resamples=400,
            seed=5,
        )

    few_synapses, many_synapses = interval(2), interval(40)
    for metric in ("balanced_accuracy", "roc_auc"):
        assert few_synapses[metric] == pytest.approx(many_synapses[metric])
    more_neurons = interval(2, copies=8)
    width = lambda b: b["roc_auc"]["ci_high"] - b["roc_auc"]["ci_low"]  # noqa: E731
    assert width(more_neurons) < 0.6 * width(few_synapses)
    assert few_synapses["n_neurons"] == n_neurons


def test_vectorised_resample_scores_equal_sklearn_with_weights():
    """The fast bootstrap must score a resample exactly as sklearn would, ties included."""
    rng = np.random.default_rng(4)
    n, n_neurons = 400, 60
    neuron = rng.integers(0, n_neurons, n)
    target = (neuron % 3 == 0).astype(int)  # a neuron's synapses share its label
    prob = np.round(np.clip(0.2 * target + rng.random(n) * 0.8, 0, 1), 1)  # many ties
    draws = rng.multinomial(n_neurons, np.full(n_neurons, 1 / n_neurons), size=6).astype(float)
    scores = _neuron_weighted_scores(draws, target, prob, neuron, 0.5)
    called = (prob >= 0.5).astype(int)
    labels = np.where(target == 1, "inhibitory", "excitatory")
    for row in range(len(draws)):
        weight = draws[row][neuron]
        assert scores["accuracy"][row] == pytest.approx(
            accuracy_score(target, called, sample_weight=weight)
        )
        assert scores["balanced_accuracy"][row] == pytest.approx(
            balanced_accuracy_score(target, called, sample_weight=weight)
        )
        assert scores["roc_auc"][row] == pytest.approx(
            roc_auc_score(target, prob, sample_weight=weight)
        )
        assert scores["pr_auc"][row] == pytest.approx(
            average_precision_score(target, prob, sample_weight=weight)
        )
        # Neuron level and calibration: the plain functions on the resample spelled out.
        repeat = np.repeat(np.arange(n), weight.astype(int))
        copies = np.repeat(np.arange(n_neurons), draws[row].astype(int))
        assert scores["expected_calibration_error"][row] == pytest.approx(
            expected_calibration_error(labels[repeat], prob[repeat])
        )
        per_neuron = neuron_table(labels, prob, neuron).set_index("pre_pt_root_id")
        drawn = per_neuron.loc[[c for c in copies if c in per_neuron.index]]
        correct = (drawn["mean_prob_inhibitory"] >= 0.5) == (drawn["label"] == "inhibitory")
        assert scores["neuron_accuracy"][row] == pytest.approx(correct.mean())


def test_expected_calibration_error_hand_computed():
    labels = ["excitatory", "inhibitory", "excitatory", "inhibitory", "inhibitory"]
    prob = np.array([0.05, 0.15, 0.85, 0.95, 1.0])
    # Bins of 0.5: [0, 0.5) holds 0.05, 0.15 (mean 0.1, 1 of 2 inhibitory: gap 0.4);
    # [0.5, 1] holds 0.85, 0.95, 1.0 (mean 0.9333, 2 of 3 inhibitory: gap 0.2667).
    expected = (2 * 0.4 + 3 * abs(2 / 3 - 2.8 / 3)) / 5
    assert expected_calibration_error(labels, prob, n_bins=2) == pytest.approx(expected)
    assert expected_calibration_error(["excitatory", "inhibitory"], np.array([0.0, 1.0])) == 0


def test_reliability_bins_agree_with_sklearn():
    rng = np.random.default_rng(3)
    target = rng.integers(0, 2, 200)
    prob = np.clip(0.5 * target + 0.5 * rng.random(200), 0, 1)
    labels = np.where(target == 1, "inhibitory", "excitatory")
    table = reliability_table(labels, prob, n_bins=10)
    filled = table[table["n_synapses"] > 0]
    fraction, mean_prob = calibration_curve(target, prob, n_bins=10, strategy="uniform")
    np.testing.assert_allclose(filled["fraction_inhibitory"], fraction)
    np.testing.assert_allclose(filled["mean_prob_inhibitory"], mean_prob)
    assert table["n_synapses"].sum() == 200


def test_neuron_level_calls_each_neuron_from_its_mean_probability():
    neuron = np.array([1, 1, 1, 2, 2, 3, 3, 3, 3])
    labels = ["inhibitory"] * 3 + ["excitatory"] * 2 + ["excitatory"] * 4
    # Neuron 1: mean 0.6 (right at 0.5), neuron 2: mean 0.45 (right), neuron 3: mean 0.55 (wrong).
    prob = np.array([0.9, 0.6, 0.3, 0.4, 0.5, 0.2, 0.8, 0.6, 0.6])
    result = neuron_level(labels, prob, neuron, threshold=0.5)
    assert result["n_neurons"] == 3
    assert result["accuracy"] == pytest.approx(2 / 3)
    assert result["balanced_accuracy"] == pytest.approx((1 + 1 / 2) / 2)
    assert result["per_class"] == {"excitatory": {"neurons": 2, "correct": 1},
                                   "inhibitory": {"neurons": 1, "correct": 1}}
    assert result["synapses_per_neuron"] == {"min": 2, "median": 3.0, "max": 4}
    assert neuron_level(labels, prob, neuron, threshold=0.58)["accuracy"] == pytest.approx(1.0)


def test_neuron_with_two_labels_is_named():
    with pytest.raises(DataError, match="neuron 7"):
        neuron_level(["excitatory", "inhibitory"], np.array([0.2, 0.8]), np.array([7, 7]))


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


def test_gallery_shows_the_most_confident_right_and_wrong_calls():
    rows = [  # id, label, prob_inhibitory
        (1, "excitatory", 0.05), (2, "excitatory", 0.30), (3, "excitatory", 0.90),
        (4, "excitatory", 0.60), (5, "inhibitory", 0.80), (6, "inhibitory", 0.99),
        (7, "inhibitory", 0.10), (8, "excitatory", 0.05),
    ]
    predictions = pd.DataFrame(
        [(i, 100 + i, "test", label, p) for i, label, p in rows]
        + [(9, 109, "val", "inhibitory", 0.2)],
        columns=["id", "pre_pt_root_id", "split", "label", "prob_inhibitory"],
    )
    chosen = gallery_examples(predictions, threshold=0.5, per_group=2)
    ids = {key: group["id"].tolist() for key, group in chosen.items()}
    assert ids == {
        ("excitatory", True): [1, 8],  # tie at 0.95 broken by id; 2 (0.70) is left out
        ("excitatory", False): [3, 4],  # most confidently wrong first
        ("inhibitory", True): [6, 5],
        ("inhibitory", False): [7],  # val synapse 9 is never shown
    }


@pytest.mark.parametrize("kind,shape", [("2d", (12, 12)), ("3d", (4, 10, 10))])
def test_gallery_figure_reads_the_test_cutouts(tmp_path, kind, shape):
    predictions = make_predictions(n_neurons=6, per_neuron=3)
    rng = np.random.default_rng(0)
    write_stack(tmp_path / f"shards/000/{kind}.tif", kind,
                rng.integers(1, 255, (len(predictions), *shape), dtype=np.uint8))
    manifest = predictions[["id", "pre_pt_root_id", "split", "label"]].assign(
        **{f"path_{kind}": f"shards/000/{kind}.tif"}, stack_index=np.arange(len(predictions))
    )
    manifest.to_parquet(tmp_path / "manifest.parquet")
    predictions.to_parquet(tmp_path / "predictions.parquet")
    shown = write_gallery(tmp_path / "predictions.parquet", tmp_path / "manifest.parquet",
                          tmp_path, kind, "m", tmp_path / "gallery.png", per_group=3)
    assert (tmp_path / "gallery.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    test = predictions[predictions["split"] == "test"]
    called_inhibitory = test["prob_inhibitory"] >= 0.5
    expected = {
        "excitatory_right": ((test.label == "excitatory") & ~called_inhibitory).sum(),
        "excitatory_wrong": ((test.label == "excitatory") & called_inhibitory).sum(),
        "inhibitory_right": ((test.label == "inhibitory") & called_inhibitory).sum(),
        "inhibitory_wrong": ((test.label == "inhibitory") & ~called_inhibitory).sum(),
    }
    assert shown == {name: min(3, int(count)) for name, count in expected.items()}


def test_gallery_names_a_synapse_without_cutout(tmp_path):
    predictions = make_predictions(n_neurons=4, per_neuron=2)
    write_stack(tmp_path / "a.tif", "2d", np.full((1, 8, 8), 7, dtype=np.uint8))
    manifest = predictions.iloc[:1][["id", "pre_pt_root_id", "label"]].assign(
        split="test", path_2d="a.tif", stack_index=0)
    manifest.to_parquet(tmp_path / "manifest.parquet")
    predictions.to_parquet(tmp_path / "predictions.parquet")
    with pytest.raises(DataError, match="no 2d cutout"):
        write_gallery(tmp_path / "predictions.parquet", tmp_path / "manifest.parquet", tmp_path,
                      "2d", "m", tmp_path / "gallery.png")
