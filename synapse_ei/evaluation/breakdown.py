"""Which cells a model gets wrong: recall per presynaptic cell type, synapse size and depth.

Per group (a fine ``cell_type`` of the cell-type table, a synapse-size bin, a cortical-depth
bin) and true class: each neuron is called from its test synapses in that group (for the cell
type, all of them) and the share called right is the neuron recall, with a Wilson interval over
those neurons; the synapse recall, the share of the group's synapses whose own call is right,
stands beside it with the counts behind both. Size and depth bins are quantile bins of the test
synapses, so each holds about as many synapses whatever the dataset's units.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from synapse_ei.errors import DataError
from synapse_ei.evaluation.intervals import wilson_interval
from synapse_ei.evaluation.neurons import calls_inhibitory
from synapse_ei.tables import INHIBITORY, LABELS

#: Default of the config key evaluate.breakdown_bins.
DEFAULT_BINS = 4
#: Grouping -> (column of the test synapses it reads, how it is grouped).
GROUPINGS = {
    "cell_type": "pre_cell_type",
    "synapse_size": "size",
    "depth_um": "depth_um",
}
COLUMNS = ["grouping", "group", "label", "n_neurons", "n_synapses", "neuron_recall",
           "ci_low", "ci_high", "synapse_recall"]


def quantile_bins(values: pd.Series, n_bins: int) -> pd.Series:
    """Each value's quantile bin as a label ``[low, high)`` (the last bin closed); ties that
    merge quantiles give fewer bins."""
    if n_bins < 1:
        raise DataError(f"evaluate.breakdown_bins: {n_bins} must be at least 1.")
    values = pd.to_numeric(values, errors="coerce").astype(float)
    edges = np.unique(np.nanquantile(values, np.linspace(0, 1, n_bins + 1)))
    index = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, max(len(edges) - 2, 0))
    names = [f"[{edges[i]:.4g}, {edges[i + 1]:.4g}{']' if i == len(edges) - 2 else ')'}"
             for i in range(max(len(edges) - 1, 1))] if len(edges) > 1 else [f"{edges[0]:.4g}"]
    return pd.Series(pd.Categorical.from_codes(index, names), index=values.index)


def recall_table(test: pd.DataFrame, group: pd.Series, grouping: str,
                 threshold: float) -> pd.DataFrame:
    """Recall per (group, true class) of the test synapses (:data:`COLUMNS`); ``group`` holds
    each synapse's group."""
    frame = pd.DataFrame({
        "group": group.reset_index(drop=True),
        "label": test["label"].to_numpy(),
        "neuron": test["pre_pt_root_id"].to_numpy(),
        "prob": test["prob_inhibitory"].to_numpy(dtype=float),
    })
    inhibitory = frame["label"] == INHIBITORY
    frame["synapse_right"] = calls_inhibitory(frame["prob"], threshold) == inhibitory
    per_neuron = frame.groupby(["group", "label", "neuron"], observed=True).agg(
        prob=("prob", "mean"), synapses=("prob", "size"), synapse_right=("synapse_right", "sum")
    ).reset_index()
    per_neuron["right"] = calls_inhibitory(per_neuron["prob"], threshold) == (
        per_neuron["label"] == INHIBITORY)
    table = per_neuron.groupby(["group", "label"], observed=True).agg(
        n_neurons=("neuron", "size"), n_synapses=("synapses", "sum"),
        right=("right", "sum"), synapse_right=("synapse_right", "sum"),
    ).reset_index()
    # Bins keep their order (a categorical group), cell types sort by name.
    table["label"] = pd.Categorical(table["label"], LABELS)
    table = table.sort_values(["label", "group"], kind="stable").reset_index(drop=True)
    low, high = wilson_interval(table["right"], table["n_neurons"])
    table = table.assign(
        grouping=grouping,
        group=table["group"].astype(str),
        label=table["label"].astype(str),
        neuron_recall=table["right"] / table["n_neurons"],
        ci_low=low, ci_high=high,
        synapse_recall=table["synapse_right"] / table["n_synapses"],
    )
    return table[COLUMNS]


def recall_breakdown(test: pd.DataFrame, threshold: float,
                     n_bins: int = DEFAULT_BINS) -> pd.DataFrame:
    """:func:`recall_table` for every grouping of :data:`GROUPINGS` whose column ``test`` has
    (``depth_um``: the synapse's y position in µm), stacked."""
    tables = []
    for grouping, column in GROUPINGS.items():
        if column not in test.columns or test[column].isna().all():
            continue
        values = test[column]
        group = values.astype(str) if grouping == "cell_type" else quantile_bins(values, n_bins)
        tables.append(recall_table(test, group, grouping, threshold))
    if not tables:
        return pd.DataFrame(columns=COLUMNS)
    return pd.concat(tables, ignore_index=True)


def synapse_context(test: pd.DataFrame, split_table: pd.DataFrame,
                    resolution_nm: Mapping[str, float] | tuple[float, float, float],
                    where: str) -> pd.DataFrame:
    """``test`` with ``pre_cell_type``, ``size`` and ``depth_um`` of each synapse taken from the
    split table (by id); columns the split table lacks are left out. ``resolution_nm`` is the
    table's voxel size (x, y, z) in nm."""
    if "id" not in split_table.columns:
        raise DataError(f"{where}: no 'id' column; rerun the split stage.")
    by_id = split_table.drop_duplicates("id").set_index("id")
    missing = ~test["id"].isin(by_id.index)
    if missing.any():
        raise DataError(
            f"{where}: test synapse {int(test['id'][missing].iloc[0])} is not in the split "
            "table; the predictions and the split come from different runs. Rerun evaluate."
        )
    extra = {}
    for column in ("pre_cell_type", "size"):
        if column in by_id.columns:
            extra[column] = test["id"].map(by_id[column]).to_numpy()
    if "ctr_pt_position_y" in by_id.columns:
        y_nm = float(tuple(resolution_nm)[1])
        extra["depth_um"] = test["id"].map(by_id["ctr_pt_position_y"]).to_numpy(float) * y_nm / 1e3
    return test.assign(**extra)
