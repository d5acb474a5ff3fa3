"""Train/val/test split by presynaptic neuron, so no neuron's synapses leak across splits.

Synapses of one neuron look alike (same axon, same neighbourhood): a synapse-level split would
let a model recognise neurons rather than classes. Each class is split on its own, so every split
gets neurons of both classes in the configured fractions. :func:`split_by_synapse` is that
synapse-level split, kept only as the leakage audit's control.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from synapse_ei import tables
from synapse_ei.config import check_split_fractions
from synapse_ei.errors import DataError
from synapse_ei.outputs import write_json, write_parquet
from synapse_ei.tables import POST_ROOT, PRE_ROOT

LABELLED = "labelled synapse table"


def split_by_neuron(
    labelled: pd.DataFrame,
    fractions: Mapping[str, float],
    seed: int,
    disjoint_postsynaptic: bool = False,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Assign each presynaptic neuron, with all its synapses, to one of train/val/test.

    ``fractions`` gives the fraction of neurons per class in each split (keys exactly
    train/val/test, summing to 1). The result depends only on the neurons and ``seed``, not on
    row order. With ``disjoint_postsynaptic`` each postsynaptic root id is also given one split
    (its own if it is a presynaptic neuron here, else the split holding most of its synapses,
    ties to the earlier of train/val/test) and synapses crossing splits are dropped.
    Returns the table with a ``split`` column, sorted by id, and an audit dict.
    """
    fractions = check_split_fractions(fractions)
    tables.require_columns(labelled, ["id", PRE_ROOT, POST_ROOT, "label"], LABELLED)
    neurons = _neuron_labels(labelled)

    split_of_neuron = _assign_neurons(neurons, fractions, seed)
    result = labelled.copy()
    result["split"] = result[PRE_ROOT].map(split_of_neuron)

    dropped = {"post_in_other_split": 0}
    if disjoint_postsynaptic:
        post_split = _assign_postsynaptic(result, split_of_neuron)
        crossing = result[POST_ROOT].map(post_split) != result["split"]
        dropped["post_in_other_split"] = int(crossing.sum())
        result = result[~crossing]
        _check_every_split_has_both_classes(result)

    result = result.sort_values("id", kind="stable").reset_index(drop=True)
    audit = _audit(result, labelled, fractions, seed, disjoint_postsynaptic, dropped)
    return result, audit


def split_by_synapse(
    labelled: pd.DataFrame, fractions: Mapping[str, float], seed: int
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The deliberately leaky control: each synapse, not each neuron, drawn into a split.

    Used only by the leakage audit (synapse_ei.reporting.leakage) to measure how much a
    synapse-level split flatters a model: a neuron's synapses land in several splits, so a model can
    score by recognising neurons seen in training. Stratified by class with scikit-learn,
    ``fractions`` of the synapses per split; depends only on the synapse ids, labels and ``seed``,
    not on row order. Any ``split`` column of ``labelled`` is replaced. Returns the table with a
    ``split`` column, sorted by id, and an audit dict shaped as :func:`split_by_neuron`'s (plus
    ``"unit": "synapse"``).
    """
    fractions = check_split_fractions(fractions)
    tables.require_columns(labelled, ["id", PRE_ROOT, POST_ROOT, "label"], LABELLED)
    _neuron_labels(labelled)  # the same label checks as the neuron split
    result = labelled.drop(columns="split", errors="ignore")
    result = result.sort_values("id", kind="stable").reset_index(drop=True)
    counts = result["label"].value_counts()
    too_few = [label for label in tables.LABELS if counts.get(label, 0) < len(tables.SPLITS)]
    if too_few:
        raise DataError(
            f"Class {too_few[0]!r} has {int(counts.get(too_few[0], 0))} synapse(s); at least "
            f"{len(tables.SPLITS)} are needed (one per split). Add data or check labels.classes."
        )
    ids, labels = result["id"].to_numpy(), result["label"].to_numpy()
    rest, test = train_test_split(
        ids, test_size=fractions["test"], random_state=seed, stratify=labels
    )
    rest_labels = result.set_index("id").loc[rest, "label"].to_numpy()
    val_share = fractions["val"] / (fractions["train"] + fractions["val"])
    train, val = train_test_split(
        rest, test_size=val_share, random_state=seed + 1, stratify=rest_labels
    )
    split_of_synapse = {}
    for name, members in (("train", train), ("val", val), ("test", test)):
        split_of_synapse.update(dict.fromkeys(members.tolist(), name))
    result["split"] = result["id"].map(split_of_synapse)
    audit = _audit(result, labelled, fractions, seed, False, {"post_in_other_split": 0})
    return result, {"unit": "synapse", **audit}


def run_split(
    labelled_path: str | Path,
    split_path: str | Path,
    audit_path: str | Path,
    fractions: Mapping[str, float],
    seed: int,
    disjoint_postsynaptic: bool = False,
    by: str = "neuron",
) -> dict[str, Any]:
    """The split stage (``by="neuron"``: :func:`split_by_neuron`) or the leakage audit's leaky
    split (``by="synapse"``: :func:`split_by_synapse`) of the labelled synapses; writes the
    split table and its audit, and returns the audit."""
    labelled = pd.read_parquet(labelled_path)
    if by == "neuron":
        split, audit = split_by_neuron(labelled, fractions, seed, disjoint_postsynaptic)
    elif by == "synapse":
        split, audit = split_by_synapse(labelled, fractions, seed)
    else:
        raise ValueError(f"by: {by!r} is neither 'neuron' nor 'synapse'")
    write_parquet(split_path, split)
    write_json(audit_path, audit)
    return audit


def _neuron_labels(labelled: pd.DataFrame) -> pd.Series:
    """One label per presynaptic neuron, indexed by root id (sorted, so row order is moot)."""
    labels_per_neuron = labelled.groupby(PRE_ROOT)["label"].agg(["nunique", "first"])
    mixed = labels_per_neuron.index[labels_per_neuron["nunique"] > 1]
    if len(mixed):
        raise DataError(
            f"labelled synapse table: presynaptic neuron {int(mixed[0])} has synapses with "
            f"different labels ({len(mixed)} such neuron(s)); a neuron has one class. "
            "Rerun the label step on its output."
        )
    unknown = sorted(set(labels_per_neuron["first"]) - set(tables.LABELS))
    if unknown:
        raise DataError(
            f"labelled synapse table: column 'label' holds {unknown}; only "
            f"{list(tables.LABELS)} are allowed."
        )
    return labels_per_neuron["first"].sort_index()


def _neurons_per_split(n: int, fractions: Mapping[str, float]) -> dict[str, int]:
    """Whole neuron counts closest to ``fractions * n`` with at least one per split."""
    target = np.array([fractions[name] * n for name in tables.SPLITS])
    counts = np.maximum(1, np.floor(target)).astype(int)
    while counts.sum() > n:  # the minimum of one pushed us over: take from the most overfull
        excess = np.where(counts > 1, counts - target, -np.inf)
        counts[int(np.argmax(excess))] -= 1
    while counts.sum() < n:  # hand out the rest by largest shortfall
        counts[int(np.argmax(target - counts))] += 1
    return dict(zip(tables.SPLITS, counts.tolist(), strict=True))


def _assign_neurons(
    neurons: pd.Series, fractions: Mapping[str, float], seed: int
) -> dict[int, str]:
    """Split each class's neurons with scikit-learn, sizes fixed per class (stratification)."""
    assignment: dict[int, str] = {}
    for label in tables.LABELS:
        ids = neurons.index[neurons == label].to_numpy()
        needed = len(tables.SPLITS)
        if len(ids) < needed:
            raise DataError(
                f"Class {label!r} has {len(ids)} presynaptic neuron(s); at least {needed} are "
                f"needed (one per split: {list(tables.SPLITS)}). Add data with more {label} "
                "neurons, or check labels.classes."
            )
        counts = _neurons_per_split(len(ids), fractions)
        rest, test = train_test_split(ids, test_size=counts["test"], random_state=seed)
        train, val = train_test_split(rest, test_size=counts["val"], random_state=seed + 1)
        for name, members in (("train", train), ("val", val), ("test", test)):
            assignment.update(dict.fromkeys(members.tolist(), name))
    return assignment


def _assign_postsynaptic(frame: pd.DataFrame, split_of_neuron: Mapping[int, str]) -> pd.Series:
    """Split of each postsynaptic root id: its own as a presynaptic neuron, else the majority."""
    votes = frame.groupby([POST_ROOT, "split"]).size().unstack(fill_value=0)
    votes = votes.reindex(columns=list(tables.SPLITS), fill_value=0)
    # idxmax returns the first maximal column: ties go to train, then val, deterministically.
    post_split = votes.idxmax(axis=1)
    own = post_split.index.map(lambda root: split_of_neuron.get(root))
    return pd.Series(np.where(pd.isna(own), post_split.to_numpy(), own), index=post_split.index)


def _check_every_split_has_both_classes(frame: pd.DataFrame) -> None:
    present = frame.groupby(["split", "label"]).size()
    for name in tables.SPLITS:
        for label in tables.LABELS:
            if (name, label) not in present.index:
                raise DataError(
                    f"split.disjoint_postsynaptic: after dropping synapses whose postsynaptic "
                    f"neuron lies in another split, split {name!r} has no {label} synapse left "
                    "(the data have too few postsynaptic neurons). Set "
                    "split.disjoint_postsynaptic to false."
                )


def _audit(
    result: pd.DataFrame,
    labelled: pd.DataFrame,
    fractions: Mapping[str, float],
    seed: int,
    disjoint_postsynaptic: bool,
    dropped: Mapping[str, int],
) -> dict[str, Any]:
    def per_split_and_label(values: pd.Series) -> dict[str, dict[str, int]]:
        return {
            name: {label: int(values.get((name, label), 0)) for label in tables.LABELS}
            for name in tables.SPLITS
        }

    grouped = result.groupby(["split", "label"])
    per_neuron = result.groupby(["split", PRE_ROOT]).size()
    synapses_per_neuron = {}
    for name in tables.SPLITS:
        counts = per_neuron.xs(name) if name in per_neuron.index.get_level_values(0) else None
        synapses_per_neuron[name] = (
            {"min": int(counts.min()), "median": float(counts.median()), "max": int(counts.max())}
            if counts is not None
            else {"min": 0, "median": 0.0, "max": 0}
        )
    splits_per_pre = result.groupby(PRE_ROOT)["split"].nunique()
    splits_per_post = result.groupby(POST_ROOT)["split"].nunique()
    splits_per_synapse = result.groupby("id")["split"].nunique()
    # A root id in either role: with disjoint_postsynaptic no neuron may be seen in two splits.
    roles = pd.concat(
        [
            result[[role, "split"]].set_axis(["root", "split"], axis=1)
            for role in (PRE_ROOT, POST_ROOT)
        ]
    )
    splits_per_root = roles.groupby("root")["split"].nunique()
    return {
        "seed": int(seed),
        "fractions": dict(fractions),
        "disjoint_postsynaptic": bool(disjoint_postsynaptic),
        "synapses_in": len(labelled),
        "synapses_out": len(result),
        "synapses": per_split_and_label(grouped.size()),
        "neurons": per_split_and_label(grouped[PRE_ROOT].nunique()),
        "synapses_per_neuron": synapses_per_neuron,
        "pre_neurons_in_two_splits": int((splits_per_pre > 1).sum()),
        "synapses_in_two_splits": int((splits_per_synapse > 1).sum()),
        "post_neurons_in_two_splits": int((splits_per_post > 1).sum()),
        "neurons_in_two_splits_any_role": int((splits_per_root > 1).sum()),
        "dropped": dict(dropped),
    }
