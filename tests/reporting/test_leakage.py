"""The leakage audit: the leaky split leaks neurons (only), the label prior scores only there."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from synapse_ei.connectivity import predict_connectivity, train_connectivity
from synapse_ei.curation.labels import label_synapses
from synapse_ei.curation.splits import split_by_neuron, split_by_synapse
from synapse_ei.errors import DataError
from synapse_ei.evaluation.metrics import compute_metrics
from synapse_ei.outputs import write_json, write_parquet
from synapse_ei.reporting.leakage import (
    label_prior_feature,
    label_prior_predictions,
    leakage_audit,
    OVERLAP_CHECKS,
    prediction_scores,
    ROLES,
    run_leakage_audit,
    SPLIT_KINDS,
    with_split_of,
)
from synapse_ei.sources.synthetic import generator as synthetic

FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}
ROOT = 864691135000000000
CLASSES = {"excitatory_neuron": "excitatory", "inhibitory_neuron": "inhibitory"}


def pure_neurons(n_exc: int = 30, n_inh: int = 10, per_neuron: int = 10) -> pd.DataFrame:
    """Labelled synapses whose neurons each have one class (as real labels do)."""
    rng = np.random.default_rng(0)
    pre = np.repeat(ROOT + np.arange(n_exc + n_inh), per_neuron)
    n = len(pre)
    return pd.DataFrame(
        {
            "id": rng.permutation(n).astype("int64") + 1,
            "pre_pt_root_id": pre.astype("int64"),
            "post_pt_root_id": (ROOT + 10_000 + rng.integers(0, 3 * n, n)).astype("int64"),
            "label": np.repeat(["excitatory"] * n_exc + ["inhibitory"] * n_inh, per_neuron),
        }
    )


def test_leaky_split_shares_neurons_across_splits_but_never_a_synapse():
    table = pure_neurons()
    leaky, audit = split_by_synapse(table, FRACTIONS, seed=3)

    assert sorted(leaky["id"]) == sorted(table["id"])  # every synapse once
    assert audit["unit"] == "synapse"
    assert audit["synapses_in_two_splits"] == 0
    splits_per_neuron = leaky.groupby("pre_pt_root_id")["split"].nunique()
    assert (splits_per_neuron > 1).mean() > 0.5  # the leak the audit measures
    assert audit["pre_neurons_in_two_splits"] == int((splits_per_neuron > 1).sum())
    # Stratified: each class split in the configured fractions of its synapses.
    for label, total in table["label"].value_counts().items():
        share = leaky[leaky["label"] == label]["split"].value_counts() / total
        for name, fraction in FRACTIONS.items():
            assert share[name] == pytest.approx(fraction, abs=0.05)
    # Row order is moot; an existing split column is replaced.
    shuffled = table.sample(frac=1, random_state=1).assign(split="test")
    again, _ = split_by_synapse(shuffled, FRACTIONS, seed=3)
    pd.testing.assert_frame_equal(again, leaky)


def test_leaky_split_refuses_a_class_too_small_for_three_splits():
    table = pure_neurons(n_exc=5, n_inh=1, per_neuron=2)
    with pytest.raises(DataError, match="'inhibitory' has 2 synapse"):
        split_by_synapse(table, FRACTIONS, seed=0)


def test_label_prior_is_at_chance_on_unseen_neurons_and_high_on_leaked_ones():
    table = pure_neurons()
    neuron, _ = split_by_neuron(table, FRACTIONS, seed=3)
    leaky, _ = split_by_synapse(table, FRACTIONS, seed=3)

    # Unseen neurons get the global train rate: one value for every test synapse.
    feature = label_prior_feature(neuron)
    test_rows = (neuron["split"] == "test").to_numpy()
    train_rate = (neuron.loc[neuron["split"] == "train", "label"] == "inhibitory").mean()
    assert np.allclose(feature[test_rows], train_rate)

    for split_table, low, high in ((neuron, 0.5, 0.5), (leaky, 0.95, 1.0)):
        predictions = label_prior_predictions(split_table, seed=0, where="split table")
        assert set(predictions["split"]) == {"val", "test"}
        test = predictions[predictions["split"] == "test"]
        scores = compute_metrics(test["label"], test["prob_inhibitory"])
        assert low <= scores["balanced_accuracy"] <= high
        assert low <= scores["roc_auc"] <= high


def test_label_prior_needs_both_classes_in_train():
    table = pure_neurons().assign(split="train")
    table.loc[table["label"] == "inhibitory", "split"] = "test"
    with pytest.raises(DataError, match="split table: the train split holds only"):
        label_prior_predictions(table, seed=0, where="split table")


def test_manifest_takes_the_leaky_split_by_id_and_refuses_strangers():
    table = pure_neurons(per_neuron=2)
    leaky, _ = split_by_synapse(table, FRACTIONS, seed=0)
    manifest = table[["id", "label"]].assign(split="train", path_2d="x.tif").iloc[::-1]
    relabelled = with_split_of(manifest, leaky, "manifest.parquet")
    assert relabelled["path_2d"].eq("x.tif").all() and list(relabelled["id"]) == list(
        manifest["id"]
    )
    assert relabelled.set_index("id")["split"].equals(
        leaky.set_index("id")["split"].loc[relabelled["id"]]
    )
    stranger = pd.concat([manifest, manifest.iloc[:1].assign(id=10**9)])
    with pytest.raises(DataError, match="manifest.parquet: synapse id 1000000000"):
        with_split_of(stranger, leaky, "manifest.parquet")


@pytest.fixture(scope="module")
def synthetic_tables(tmp_path_factory):
    """The synthetic generator's tables (its EM rendering skipped: no image is used here)."""
    out = tmp_path_factory.mktemp("synthetic")
    original = synthetic._write_em
    synthetic._write_em = lambda *args: None
    try:
        synthetic.synthesize(out, n_synapses=900, n_neurons=80, inhibitory_fraction=0.2, seed=3,
                              neuron_traits=0.0)
    finally:
        synthetic._write_em = original
    synapses = pd.read_parquet(out / "synapses.parquet")
    cell_types = pd.read_parquet(out / "cell_types.parquet")
    labelled, _ = label_synapses(synapses, cell_types, "classification_system", CLASSES)
    return out, labelled


def test_on_synthetic_data_the_leaky_split_scores_higher(synthetic_tables, tmp_path):
    """The issue's check: the leaky split scores higher, most for the identity-only baseline."""
    source, labelled = synthetic_tables
    neuron, _ = split_by_neuron(labelled, FRACTIONS, seed=5)
    leaky, _ = split_by_synapse(neuron, FRACTIONS, seed=5)
    scores = {}
    for kind, split_table in (("neuron", neuron), ("leaky", leaky)):
        prior = prediction_scores(label_prior_predictions(split_table, 0, kind), n_resamples=50)
        path = tmp_path / kind / "split.parquet"
        write_parquet(path, split_table)
        train_connectivity(path, source / "synapses.parquet", source / "cell_types.parquet",
                           "classification_system", CLASSES, tmp_path / kind, seed=0)
        connectivity = prediction_scores(
            predict_connectivity(tmp_path / kind / "model.joblib", path,
                                 source / "synapses.parquet", source / "cell_types.parquet"),
            n_resamples=50,
        )
        scores[kind] = {"label_prior": prior, "connectivity": connectivity}

    def gap(model: str, score: str = "roc_auc") -> float:
        return scores["leaky"][model][score] - scores["neuron"][model][score]

    assert scores["neuron"]["label_prior"]["roc_auc"] == pytest.approx(0.5)
    assert scores["leaky"]["label_prior"]["balanced_accuracy"] > 0.9
    assert gap("label_prior") > 0.4
    # The connectivity features carry no neuron identity: whatever it gains by the leak (on
    # these data it varies in sign with the seeds) stays far below the label prior's gain.
    assert abs(gap("connectivity")) < gap("label_prior") - 0.1


def _metrics(balanced_accuracy: float, roc_auc: float) -> dict:
    """The part of an evaluate stage's metrics.json the audit reads."""
    interval = {"ci_low": balanced_accuracy - 0.1, "ci_high": min(1.0, balanced_accuracy + 0.1)}
    return {
        "test": {
            "balanced_accuracy": balanced_accuracy,
            "roc_auc": roc_auc,
            "ci95": {"balanced_accuracy": interval, "roc_auc": interval},
        },
        "counts": {"test": {"synapses": {"total": 80}, "neurons": {"total": 8}}},
    }


def test_audit_writes_every_model_under_both_splits_with_the_data_section(tmp_path):
    table = pure_neurons()
    neuron, neuron_audit = split_by_neuron(table, FRACTIONS, seed=3)
    leaky, leaky_audit = split_by_synapse(table, FRACTIONS, seed=3)
    paths: dict[str, dict[str, object]] = {key: {} for key in ("split", "audit", "image", "conn")}
    for kind, split_table, audit, image, conn in (
        ("neuron", neuron, neuron_audit, (0.7, 0.75), (0.6, 0.62)),
        ("leaky", leaky, leaky_audit, (0.9, 0.95), (0.65, 0.7)),
    ):
        for key, write, value, name in (
            ("split", write_parquet, split_table, "split.parquet"),
            ("audit", write_json, audit, "audit.json"),
            ("image", write_json, _metrics(*image), "image.json"),
            ("conn", write_json, _metrics(*conn), "conn.json"),
        ):
            paths[key][kind] = tmp_path / kind / name
            write(paths[key][kind], value)

    out = {suffix: tmp_path / f"leakage.{suffix}" for suffix in ("json", "md", "html", "png")}
    # The stage: the audit, then its four files.
    run_leakage_audit(
        {"json": out["json"], "markdown": out["md"], "html": out["html"], "figure": out["png"]},
        split_paths=paths["split"], split_audit_paths=paths["audit"],
        image_metrics_paths=paths["image"], connectivity_metrics_paths=paths["conn"],
        image_model="cnn2d", connectivity_model="connectivity", seed=0, n_resamples=50,
    )  # fmt: skip

    written = json.loads(out["json"].read_text())
    assert list(written["models"]) == list(ROLES)
    image = written["models"]["image_model"]
    assert image["model"] == "cnn2d"
    assert image["gap"]["balanced_accuracy"] == pytest.approx(0.2)
    assert image["leaky"]["ci95"]["roc_auc"] == {"ci_low": 0.8, "ci_high": 1.0}
    prior = written["models"]["label_prior"]
    assert prior["neuron"]["balanced_accuracy"] == pytest.approx(0.5)
    assert prior["gap"]["balanced_accuracy"] > 0.4
    splits = written["data"]["splits"]
    assert set(splits) == set(SPLIT_KINDS)
    assert splits["neuron"]["synapses"] == neuron_audit["synapses"]
    assert set(splits["leaky"]["overlap"]) == set(OVERLAP_CHECKS)
    assert splits["neuron"]["overlap"]["pre_neurons_in_two_splits"] == 0
    assert splits["leaky"]["overlap"]["pre_neurons_in_two_splits"] > 0
    sizes = written["data"]["synapses_per_neuron"]
    assert (sizes["n_neurons"], sizes["max"], sizes["median"]) == (40, 10, 10.0)
    assert sizes["largest_neuron_share"] == pytest.approx(1 / 40)
    markdown = out["md"].read_text()
    assert "| image_model | cnn2d | 0.700 [0.600, 0.800] | 0.900 [0.800, 1.000] | +0.200 |" in (
        markdown
    )
    assert "Overlap checks" in markdown and "<table" in out["html"].read_text()
    assert out["png"].read_bytes()[:4] == b"\x89PNG"


def test_audit_refuses_splits_over_different_synapses(tmp_path):
    table = pure_neurons()
    neuron, audit = split_by_neuron(table, FRACTIONS, seed=3)
    leaky, _ = split_by_synapse(table.iloc[5:], FRACTIONS, seed=3)
    write_parquet(tmp_path / "neuron.parquet", neuron)
    write_parquet(tmp_path / "leaky.parquet", leaky)
    paths = {"neuron": tmp_path / "neuron.parquet", "leaky": tmp_path / "leaky.parquet"}
    with pytest.raises(DataError, match="leaky.parquet: holds other synapses"):
        leakage_audit(paths, paths, paths, paths, "cnn2d", "connectivity", seed=0)
