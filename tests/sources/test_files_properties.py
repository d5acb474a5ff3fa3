"""Fuzzed table exports: the files source loads them or says what is wrong (hypothesis)."""

from __future__ import annotations

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from synapse_ei import tables as tables_module
from synapse_ei.errors import DataError
from synapse_ei.sources import files


SYNAPSE_COLUMNS = ["id", "pre_pt_root_id", "post_pt_root_id",
                   "ctr_pt_position_x", "ctr_pt_position_y", "ctr_pt_position_z", "size"]  # fmt: skip
cell = st.one_of(
    st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=True), st.none(),
    st.text(max_size=6), st.just("864691135000000001"),
)  # fmt: skip


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(st.lists(cell, min_size=7, max_size=7), min_size=0, max_size=6),
    order=st.permutations(SYNAPSE_COLUMNS),
    drop=st.sampled_from([None, *SYNAPSE_COLUMNS]),
    duplicate_first=st.booleans(),
)
def test_any_synapse_export_loads_or_gives_a_data_error(tmp_path, rows, order, drop,
                                                        duplicate_first):
    frame = pd.DataFrame(rows, columns=SYNAPSE_COLUMNS)
    if duplicate_first and len(frame):
        frame = pd.concat([frame, frame.iloc[:1]], ignore_index=True)
    frame = frame[[column for column in order if column != drop]]
    synapses = tmp_path / "synapses.csv"
    frame.to_csv(synapses, index=False)
    cell_types = tmp_path / "cell_types.csv"
    cell_types.write_text("pt_root_id,cell_type\n864691135000000001,23P\n")
    try:
        tables = files.load(synapses, cell_types, em_path="not-read")
    except DataError as error:
        assert str(synapses) in str(error) or "synapse" in str(error).lower(), error
        return
    loaded = tables.synapses
    for column in ("id", "pre_pt_root_id", "post_pt_root_id"):
        assert loaded[column].dtype == "int64"
    assert loaded["id"].is_unique


# CAVE's packed points as CSV text: bracketed or not, three parts or not, numbers or not.
packed_cell = st.one_of(
    cell,
    st.builds(
        lambda template, parts: template.format(" ".join(map(str, parts))),
        st.sampled_from(["[{}]", "[ {} ]", "{}"]),
        st.lists(st.one_of(st.integers(-5, 10**6), st.floats(), st.text(max_size=3)), max_size=4),
    ),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(points=st.lists(packed_cell, min_size=1, max_size=6), separator=st.sampled_from([" ", ", ", "\n "]))
def test_any_packed_point_loads_or_names_its_row(tmp_path, points, separator):
    frame = pd.DataFrame({
        "id": range(len(points)), "pre_pt_root_id": 1, "post_pt_root_id": 2,
        "ctr_pt_position": [p.replace(" ", separator) if isinstance(p, str) else p for p in points],
    })  # fmt: skip
    synapses = tmp_path / "synapses.csv"
    frame.to_csv(synapses, index=False)
    cell_types = tmp_path / "cell_types.csv"
    cell_types.write_text("pt_root_id,cell_type\n1,23P\n")
    try:
        tables = files.load(synapses, cell_types, em_path="not-read")
    except DataError as error:
        assert str(synapses) in str(error) and "row" in str(error), error
        return
    assert list(tables.synapses["id"]) == list(range(len(points)))
    assert all(tables.synapses[column].dtype == "int64" for column in tables_module.CTR)
