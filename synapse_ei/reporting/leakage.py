"""The leakage audit: how much a synapse-level split flatters a model, against the neuron split.

Every synapse of a presynaptic neuron shares that neuron's label, so a split that puts a
neuron's synapses in train and test lets a model score by recognising the neuron. The audit
trains the same models on both splits and reports the gap, beside the "per-neuron label prior":
a baseline whose one feature is the presynaptic neuron's label rate among the train synapses.
It knows nothing but neuron identity, so it scores at chance on unseen neurons (the neuron
split) and high wherever test neurons were seen in training (the leaky split).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # figures are files; no display on a cluster node

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402

from synapse_ei.errors import DataError  # noqa: E402
from synapse_ei.evaluation.bootstrap import (  # noqa: E402
    bootstrap_over_neurons,
    BOOTSTRAP_SEED,
    N_BOOTSTRAP,
)
from synapse_ei.evaluation.metrics import compute_metrics, DEFAULT_THRESHOLD  # noqa: E402
from synapse_ei.outputs import read_json, write_json, write_parquet, write_text  # noqa: E402
from synapse_ei.reporting.render import (  # noqa: E402
    interval_bars,
    markdown_table,
    save_figure,
    write_html,
)
from synapse_ei.tables import (  # noqa: E402
    INHIBITORY,
    LABEL_INDEX,
    LABELS,
    PRE_ROOT,
    PREDICTION_COLUMNS,
    require_columns,
    require_ids_in,
    require_values_in,
    SPLITS,
    to_int64,
)

log = logging.getLogger(__name__)

#: The label prior's one feature.
LABEL_PRIOR_FEATURE = "pre_train_inhibitory_rate"
#: The two splits compared, as keys of the audit; "leaky" is
#: synapse_ei.curation.splits.split_by_synapse.
SPLIT_KINDS = ("neuron", "leaky")
#: The audited models, as keys of the audit.
ROLES = ("image_model", "connectivity", "label_prior")
#: Test scores compared (threshold 0.5), each with its 95% interval over presynaptic neurons.
SCORES = {"balanced_accuracy": "balanced accuracy", "roc_auc": "ROC-AUC"}
#: The split audit's overlap counts (synapse_ei.curation.splits): all 0 for the neuron split.
OVERLAP_CHECKS = (
    "pre_neurons_in_two_splits",
    "synapses_in_two_splits",
    "post_neurons_in_two_splits",
    "neurons_in_two_splits_any_role",
)
NOTE = (
    "Test split, threshold 0.5; intervals are 95% bootstrap intervals over presynaptic neurons. "
    "gap = leaky - neuron. The neuron split keeps every presynaptic neuron in one split; the "
    "leaky split draws synapses, so test neurons were seen in training. The label prior knows "
    "only each neuron's train label rate: it can score only where neurons leak."
)


def with_split_of(manifest: pd.DataFrame, split_table: pd.DataFrame, where: str) -> pd.DataFrame:
    """The cutout manifest with its ``split`` column taken from ``split_table`` (by synapse id).

    Reuses the cutouts of the neuron split for a model trained on another split. Every manifest
    row must be in ``split_table``; ``where`` names the manifest in errors.
    """
    require_columns(manifest, ["id", "split"], where)
    require_columns(split_table, ["id", "split"], "leaky split table")
    manifest = to_int64(manifest, ["id"], where)
    split_of = to_int64(split_table, ["id"], "leaky split table").set_index("id")["split"]
    require_ids_in(manifest, split_of.index, where, "leaky split",
                   "Both come from the same split table: rerun the leaky_split rule.")
    result = manifest.copy()
    result["split"] = result["id"].map(split_of).to_numpy()
    return result


def _check_split_table(split_table: pd.DataFrame, where: str) -> pd.DataFrame:
    require_columns(split_table, ["id", PRE_ROOT, "label", "split"], where)
    for column, allowed in (("label", LABELS), ("split", SPLITS)):
        require_values_in(split_table, column, allowed, where, "Rerun the split stage.")
    return to_int64(split_table, ["id", PRE_ROOT], where)


def label_prior_feature(split_table: pd.DataFrame) -> np.ndarray:
    """Each row's presynaptic neuron's share of inhibitory synapses among the train synapses.

    A neuron with no train synapse gets the global train share: nothing is known of it.
    """
    train = split_table[split_table["split"] == "train"]
    inhibitory = train["label"] == INHIBITORY
    rate = inhibitory.groupby(train[PRE_ROOT]).mean()
    return split_table[PRE_ROOT].map(rate).fillna(float(inhibitory.mean())).to_numpy(dtype=float)


def label_prior_predictions(split_table: pd.DataFrame, seed: int, where: str) -> pd.DataFrame:
    """Fit the label prior on the train split; predict val and test (evaluate's columns).

    A logistic regression (balanced class weights) on :func:`label_prior_feature`.
    """
    split_table = _check_split_table(split_table, where)
    is_train = (split_table["split"] == "train").to_numpy()
    present = sorted(set(split_table.loc[is_train, "label"]))
    if present != sorted(LABELS):
        raise DataError(
            f"{where}: the train split holds only {present or 'no'} synapses; the label prior "
            "needs both classes. Use more neurons or other split fractions."
        )
    feature = label_prior_feature(split_table)[:, None]
    target = split_table["label"].map(LABEL_INDEX).to_numpy(dtype=int)
    model = LogisticRegression(class_weight="balanced", random_state=seed)
    model.fit(feature[is_train], target[is_train])
    scored = split_table["split"].isin(["val", "test"]).to_numpy()
    rows = split_table.loc[scored]
    return pd.DataFrame(
        {
            "id": rows["id"].to_numpy(),
            PRE_ROOT: rows[PRE_ROOT].to_numpy(),
            "split": rows["split"].astype(str).to_numpy(),
            "label": rows["label"].astype(str).to_numpy(),
            "prob_inhibitory": model.predict_proba(feature[scored])[:, 1].astype(float),
        },
        columns=PREDICTION_COLUMNS,
    )


def prediction_scores(
    predictions: pd.DataFrame, n_resamples: int = N_BOOTSTRAP, seed: int = BOOTSTRAP_SEED
) -> dict[str, Any]:
    """Test balanced accuracy and ROC-AUC at 0.5, with evaluate's bootstrap over neurons."""
    test = predictions[predictions["split"] == "test"]
    labels, prob = test["label"].to_numpy(), test["prob_inhibitory"].to_numpy(dtype=float)
    metrics = compute_metrics(labels, prob, DEFAULT_THRESHOLD)
    boot = bootstrap_over_neurons(
        labels, prob, test[PRE_ROOT].to_numpy(), DEFAULT_THRESHOLD, n_resamples, seed
    )
    return {
        **{name: metrics[name] for name in SCORES},
        "ci95": {name: dict(boot[name]) for name in SCORES},
        "n_test_synapses": int(len(test)),
        "n_test_neurons": int(test[PRE_ROOT].nunique()),
    }


def scores_from_metrics(metrics: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The same scores read from an evaluate stage's ``metrics.json``."""
    try:
        test = metrics["test"]
        return {
            **{name: float(test[name]) for name in SCORES},
            "ci95": {name: dict(test["ci95"][name]) for name in SCORES},
            "n_test_synapses": int(metrics["counts"]["test"]["synapses"]["total"]),
            "n_test_neurons": int(metrics["counts"]["test"]["neurons"]["total"]),
        }
    except (KeyError, TypeError) as error:
        raise DataError(
            f"{where}: no test {error} in these metrics; rerun the evaluate stage that wrote it."
        ) from error


def _compare(model: str, by_split: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    entry: dict[str, Any] = {"model": model}
    entry.update({kind: dict(by_split[kind]) for kind in SPLIT_KINDS})
    entry["gap"] = {name: by_split["leaky"][name] - by_split["neuron"][name] for name in SCORES}
    return entry


def data_overview(split_table: pd.DataFrame, split_audit: Mapping[str, Any]) -> dict[str, Any]:
    """Class counts per split, synapses per neuron per split and the overlap checks of a split."""
    missing = [key for key in ("synapses", "neurons", *OVERLAP_CHECKS) if key not in split_audit]
    if missing:
        raise DataError(f"split audit: keys {missing} are missing; rerun the split stage.")
    return {
        "synapses": split_audit["synapses"],
        "neurons": split_audit["neurons"],
        "synapses_per_neuron": split_audit.get("synapses_per_neuron", {}),
        "overlap": {key: int(split_audit[key]) for key in OVERLAP_CHECKS},
        "n_synapses": int(len(split_table)),
    }


def neuron_sizes(split_table: pd.DataFrame) -> dict[str, Any]:
    """Synapses per presynaptic neuron: does any one neuron dominate the data?"""
    per_neuron = split_table.groupby(PRE_ROOT).size()
    largest = int(per_neuron.idxmax())
    return {
        "n_neurons": int(len(per_neuron)),
        "max": int(per_neuron.max()),
        "median": float(per_neuron.median()),
        "largest_neuron": largest,
        "largest_neuron_share": float(per_neuron.max() / per_neuron.sum()),
    }


def _check_keys(**mappings: Mapping[str, Any]) -> None:
    for name, paths in mappings.items():
        if set(paths) != set(SPLIT_KINDS):
            raise ValueError(f"{name}: keys {sorted(paths)} must be exactly {list(SPLIT_KINDS)}")


def _read_split_tables(split_paths: Mapping[str, str | Path]) -> dict[str, pd.DataFrame]:
    """Both split tables, checked to cover the same synapses."""
    tables = {
        kind: _check_split_table(pd.read_parquet(path), str(path))
        for kind, path in split_paths.items()
    }
    if set(tables["neuron"]["id"]) != set(tables["leaky"]["id"]):
        raise DataError(
            f"{split_paths['leaky']}: holds other synapses than {split_paths['neuron']}; both "
            "splits must cover the same synapses. Rerun the leaky_split rule."
        )
    return tables


def _from_metrics(model: str, paths: Mapping[str, str | Path]) -> dict[str, Any]:
    """A trained model's comparison, read from its evaluate stages under both splits."""
    return _compare(model, {
        kind: scores_from_metrics(read_json(path), str(path)) for kind, path in paths.items()
    })


def leakage_audit(
    split_paths: Mapping[str, str | Path],
    split_audit_paths: Mapping[str, str | Path],
    image_metrics_paths: Mapping[str, str | Path],
    connectivity_metrics_paths: Mapping[str, str | Path],
    image_model: str,
    connectivity_model: str,
    seed: int,
    n_resamples: int = N_BOOTSTRAP,
) -> dict[str, Any]:
    """The audit: three models under both splits and the data of both splits.

    Each mapping is keyed by split kind (``neuron``, ``leaky``): the split tables and their
    audits, and the ``metrics.json`` of the image model and the connectivity baseline trained
    on that split. The label prior is fit here, on each split table.
    """
    _check_keys(split_paths=split_paths, split_audit_paths=split_audit_paths,
                image_metrics_paths=image_metrics_paths,
                connectivity_metrics_paths=connectivity_metrics_paths)
    tables = _read_split_tables(split_paths)
    label_prior = {
        kind: prediction_scores(label_prior_predictions(table, seed, str(split_paths[kind])),
                                n_resamples)
        for kind, table in tables.items()
    }
    models = {
        "image_model": _from_metrics(image_model, image_metrics_paths),
        "connectivity": _from_metrics(connectivity_model, connectivity_metrics_paths),
        "label_prior": _compare("label_prior", label_prior),
    }
    for role, entry in models.items():
        log.info(
            "leakage audit, %s (%s): balanced accuracy %.3f neuron split, %.3f leaky split",
            role, entry["model"], entry["neuron"]["balanced_accuracy"],
            entry["leaky"]["balanced_accuracy"],
        )
    return {
        "scores": "test split, threshold 0.5, ci95 by bootstrap over presynaptic neurons",
        "gap": "leaky - neuron",
        "positive_class": INHIBITORY,
        "label_prior_feature": LABEL_PRIOR_FEATURE,
        "models": models,
        "data": {
            "splits": {kind: data_overview(tables[kind], read_json(split_audit_paths[kind]))
                       for kind in SPLIT_KINDS},
            "synapses_per_neuron": neuron_sizes(tables["neuron"]),
        },
    }


def _score_cell(scores: Mapping[str, Any], name: str) -> str:
    interval = scores["ci95"][name]
    return f"{scores[name]:.3f} [{interval['ci_low']:.3f}, {interval['ci_high']:.3f}]"


def audit_tables(audit: Mapping[str, Any]) -> dict[str, tuple[list[str], list[list[str]]]]:
    """The audit as (header, rows) tables: scores, class counts per split, overlap checks."""
    score_header = ["role", "model"]
    for label in SCORES.values():
        score_header += [f"{label}, neuron split", f"{label}, leaky split", f"{label} gap"]
    score_rows = []
    for role in ROLES:
        entry = audit["models"][role]
        row = [role, entry["model"]]
        for name in SCORES:
            row += [
                _score_cell(entry["neuron"], name),
                _score_cell(entry["leaky"], name),
                f"{entry['gap'][name]:+.3f}",
            ]
        score_rows.append(row)

    splits = audit["data"]["splits"]
    count_header = ["split kind", "split"] + [
        f"{what} {label}" for what in ("synapses", "neurons") for label in LABELS
    ]
    count_rows = [
        [kind, name]
        + [str(splits[kind][what][name][label]) for what in ("synapses", "neurons")
           for label in LABELS]
        for kind in SPLIT_KINDS
        for name in SPLITS
    ]
    overlap_header = ["check", *[f"{kind} split" for kind in SPLIT_KINDS]]
    overlap_rows = [
        [check, *[str(splits[kind]["overlap"][check]) for kind in SPLIT_KINDS]]
        for check in OVERLAP_CHECKS
    ]
    sizes = audit["data"]["synapses_per_neuron"]
    size_header = ["presynaptic neurons", "max synapses", "median synapses",
                   "largest neuron's share"]
    size_rows = [[str(sizes["n_neurons"]), str(sizes["max"]), f"{sizes['median']:g}",
                  f"{sizes['largest_neuron_share']:.3%}"]]
    return {
        "Test scores": (score_header, score_rows),
        "Class counts per split": (count_header, count_rows),
        "Synapses per presynaptic neuron": (size_header, size_rows),
        "Overlap checks (neurons or synapses in two splits)": (overlap_header, overlap_rows),
    }


def write_leakage_audit(
    audit: Mapping[str, Any],
    json_path: str | Path,
    markdown_path: str | Path,
    html_path: str | Path,
    png_path: str | Path,
) -> None:
    """Write the audit as JSON (every number), Markdown and HTML tables, and a bar figure."""
    write_json(json_path, audit)
    sections = audit_tables(audit)
    text = "# Leakage audit\n\n" + NOTE + "\n"
    for title, (header, rows) in sections.items():
        text += f"\n## {title}\n\n" + markdown_table(header, rows)
    write_text(markdown_path, text)
    write_html(html_path, "Leakage audit", NOTE, {
        title: pd.DataFrame(rows, columns=header) for title, (header, rows) in sections.items()
    })
    leakage_figure(audit, png_path)


def leakage_figure(audit: Mapping[str, Any], png_path: str | Path) -> None:
    """Per score, bars of each model under the neuron and the leaky split, 95% intervals."""
    labels = [f"{role}\n({audit['models'][role]['model']})" for role in ROLES]
    figure, axes = plt.subplots(1, len(SCORES), figsize=(4.2 * len(SCORES), 3.8), sharey=True)
    for ax, (name, title) in zip(np.atleast_1d(axes), SCORES.items(), strict=True):
        series = {}
        for kind in SPLIT_KINDS:
            scores = [audit["models"][role][kind] for role in ROLES]
            series[f"{kind} split"] = (
                [s[name] for s in scores],
                [s["ci95"][name]["ci_low"] for s in scores],
                [s["ci95"][name]["ci_high"] for s in scores],
            )
        interval_bars(ax, labels, series)
        ax.axhline(0.5, linestyle="--", color="grey", label="chance")
        ax.tick_params(axis="x", labelsize="small")
        ax.set_ylim(0, 1.05)
        ax.set_title(f"test {title}")
    np.atleast_1d(axes)[0].set_ylabel("test score (95% CI over neurons)")
    np.atleast_1d(axes)[-1].legend(loc="lower right", fontsize="small")
    figure.suptitle("Leakage audit: neuron-level vs synapse-level (leaky) split")
    save_figure(figure, png_path)


def run_leaky_manifest(
    manifest_path: str | Path, split_path: str | Path, out_path: str | Path
) -> pd.DataFrame:
    """The leaky_manifest stage: the cutout manifest with the leaky split's ``split`` column
    (:func:`with_split_of`), written to ``out_path``; no new cutouts."""
    manifest = with_split_of(
        pd.read_parquet(manifest_path), pd.read_parquet(split_path), where=str(manifest_path)
    )
    write_parquet(out_path, manifest)
    return manifest


def run_leakage_audit(out_paths: Mapping[str, str | Path], **inputs: Any) -> dict[str, Any]:
    """The leakage_audit stage: :func:`leakage_audit` of ``inputs`` (its arguments), written by
    :func:`write_leakage_audit` to ``out_paths`` (keys ``json``, ``markdown``, ``html``,
    ``figure``)."""
    audit = leakage_audit(**inputs)
    write_leakage_audit(
        audit, out_paths["json"], out_paths["markdown"], out_paths["html"], out_paths["figure"]
    )
    return audit
