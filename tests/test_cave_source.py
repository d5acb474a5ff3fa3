"""The CAVE source, offline: real CAVEclient code against a fake materialization server."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
import requests
import responses

from cave_helpers import (
    DATASTACK,
    GLOBAL_SERVER,
    ROOT_BASE,
    VERSION,
    FakeMaterializationServer,
    cell_type_table,
    make_client,
    synapse_table,
)
from synapse_ei import labels, tables
from synapse_ei.errors import DataError
from synapse_ei.sources import cave

CELLS = "aibs_metamodel_celltypes_v661"
SYNAPSES = "synapses_pni_2"
NEURONS = [ROOT_BASE + i for i in range(1, 8)]  # 5 excitatory, 2 inhibitory
GLIA = ROOT_BASE + 8


def make_server(per_neuron: int = 4, **kwargs) -> FakeMaterializationServer:
    syn = synapse_table(NEURONS + [GLIA], [per_neuron] * 8)
    return FakeMaterializationServer({CELLS: cell_type_table(), SYNAPSES: syn}, **kwargs)


def run_load(server: FakeMaterializationServer, client=None, **kwargs):
    kwargs = {"batch_size": 3, "backoff_seconds": 0.0, **kwargs}
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        server.register(rsps)
        return cave.load(DATASTACK, VERSION, SYNAPSES, CELLS, client=client or make_client(),
                         **kwargs)


def synapse_requests(server: FakeMaterializationServer) -> list[dict]:
    return [r for r in server.requests if r["table"] == SYNAPSES]


def expected_synapses(server: FakeMaterializationServer) -> pd.DataFrame:
    frame = server.tables[SYNAPSES]
    return frame[frame["pre_pt_root_id"].isin(NEURONS)].sort_values("id")


def test_version_is_pinned_and_neurons_are_queried_in_batches():
    server = make_server()
    out = run_load(server)

    assert all(f"/version/{VERSION}/" in r["url"] for r in server.requests)
    batches = [r["body"]["filter_in_dict"][SYNAPSES]["pre_pt_root_id"] for r in
               synapse_requests(server)]
    # 7 neurons, 3 per query: glia and the root id 0 row are never asked for.
    assert batches == [NEURONS[0:3], NEURONS[3:6], NEURONS[6:7]]
    assert out.synapses["id"].tolist() == expected_synapses(server)["id"].tolist()
    assert out.synapses["pre_pt_root_id"].dtype == np.int64
    assert set(tables.SYNAPSE_REQUIRED) <= set(out.synapses.columns)
    assert len(out.cell_types) == len(cell_type_table())
    prov = out.provenance
    assert prov["materialization_version"] == VERSION
    assert prov["datastack"] == DATASTACK and prov["server_address"] == GLOBAL_SERVER
    assert prov["version_timestamp"].startswith("2024-06-05T10:10:01")
    assert prov["tables"] == {"synapses": SYNAPSES, "cell_types": CELLS, "proofreading": None}
    assert prov["caveclient_version"] == "8.2.1"
    assert prov["rows"]["synapses"] == len(out.synapses) == 28
    json.dumps(prov)  # JSON-serialisable as written by the query stage


def test_output_labels_with_the_suggested_mapping():
    out = run_load(make_server())
    mapping = cave.CELL_TYPE_TABLES[CELLS]
    labelled, stats = labels.label_synapses(
        out.synapses, out.cell_types, mapping["column"], mapping["classes"]
    )
    assert stats["by_label"] == {"excitatory": 20, "inhibitory": 8}
    for entry in cave.CELL_TYPE_TABLES.values():
        assert set(entry["classes"].values()) == set(tables.LABELS)


def test_an_answer_cut_by_the_server_is_split_until_complete():
    server = make_server(row_limit=10)  # a 4-neuron batch has 16 synapses: cut to 10
    quiet = logging.getLogger("caveclient")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # a user silencing caveclient must not hide a cut answer
    try:
        out = run_load(server, batch_size=4)
    finally:
        quiet.setLevel(level)

    assert out.synapses["id"].tolist() == expected_synapses(server)["id"].tolist()
    sizes = [len(r["body"]["filter_in_dict"][SYNAPSES]["pre_pt_root_id"])
             for r in synapse_requests(server)]
    # Halved once, and the later batches keep the smaller size.
    assert sizes == [4, 2, 2, 2, 1]
    assert out.provenance["truncated_queries_split"] == 1
    assert out.provenance["final_batch_size"] == 2


def test_max_rows_per_query_is_sent_and_a_full_answer_counts_as_cut():
    server = make_server()
    out = run_load(server, max_rows_per_query=8)
    assert {r["body"]["limit"] for r in server.requests} == {8}
    assert out.synapses["id"].tolist() == expected_synapses(server)["id"].tolist()
    assert out.provenance["truncated_queries_split"] >= 1


def test_one_root_id_over_the_limit_is_an_error_naming_it():
    server = make_server(per_neuron=12, row_limit=10)
    with pytest.raises(DataError, match=f"root id {NEURONS[0]} alone") as error:
        run_load(server)
    assert str(NEURONS[0]) in str(error.value) and SYNAPSES in str(error.value)


def test_a_cut_cell_type_table_is_paged_by_id():
    server = make_server(per_neuron=2, row_limit=3)
    out = run_load(server, batch_size=1)
    assert sorted(out.cell_types["pt_root_id"]) == sorted(cell_type_table()["pt_root_id"])
    assert len(out.synapses) == 14


@pytest.mark.parametrize("convert_on_server", [True, False])
def test_positions_come_back_in_4_4_40_voxels(convert_on_server):
    native = make_server()
    syn = native.tables[SYNAPSES].copy()
    coarse = syn.copy()
    for column in [c for c in syn.columns if c.endswith(("_x", "_y"))]:
        coarse[column] = syn[column] // 2  # the same points stored at 8x8x40 nm
        syn[column] = coarse[column] * 2
    server = FakeMaterializationServer(
        {CELLS: native.tables[CELLS], SYNAPSES: coarse},
        resolutions={SYNAPSES: (8.0, 8.0, 40.0)}, convert_on_server=convert_on_server,
    )
    out = run_load(server)

    assert all(r["body"]["desired_resolution"] == [4.0, 4.0, 40.0] for r in server.requests)
    assert all(r["params"]["split_positions"] == ["True"] for r in server.requests)
    want = syn[syn["pre_pt_root_id"].isin(NEURONS)].sort_values("id")
    got = out.synapses
    for column in tables.CTR + tables.PRE:
        assert got[column].tolist() == want[column].tolist(), column
        assert got[column].dtype == np.int64
    assert out.position_resolution == (4.0, 4.0, 40.0)


def test_network_errors_are_retried():
    server = make_server(failures=[requests.ConnectionError("reset"), 500])
    out = run_load(server, retries=3)
    assert out.provenance["network_retries"] == 2
    assert len(out.synapses) == 28


def test_network_errors_give_up_naming_the_server():
    server = make_server(failures=[requests.ConnectionError("unreachable")] * 10)
    with pytest.raises(DataError, match="failed after 3 attempt") as error:
        run_load(server, retries=2)
    assert GLOBAL_SERVER in str(error.value) and "token" in str(error.value)
    assert len(server.requests) == 3


def test_the_token_never_reaches_provenance_or_errors():
    secret = "tok-9f8e7d6c5b4a3210-planted"
    server = make_server(echo=secret)  # the server echoes it in a notice header
    out = run_load(server, client=make_client(token=secret))
    text = json.dumps(out.provenance)
    assert secret not in text and "***" in text  # the notice is kept, scrubbed

    failing = make_server(echo=secret, failures=[500] * 5)
    with pytest.raises(DataError) as error:
        run_load(failing, client=make_client(token=secret), retries=1)
    assert secret not in str(error.value) and "***" in str(error.value)


def test_missing_token_says_how_to_set_it(monkeypatch, tmp_path):
    client = make_client()
    client.auth.token = None
    with pytest.raises(DataError, match="save_token"):
        run_load(make_server(), client=client)

    monkeypatch.delenv(cave.TOKEN_ENV_VAR, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.cloudvolume/secrets here
    with responses.RequestsMock(assert_all_requests_are_fired=False):  # nothing may be fetched
        with pytest.raises(DataError, match=cave.TOKEN_ENV_VAR):
            cave.connect(DATASTACK, VERSION, server_address=GLOBAL_SERVER)


def test_client_pinned_to_another_version_is_refused():
    with pytest.raises(DataError, match=f"version {VERSION - 1}"):
        run_load(make_server(), client=make_client(version=VERSION - 1))


def test_proofread_axons_only_keeps_proofread_presynaptic_cells():
    server = make_server()
    server.tables["proofreading_status_and_strategy"] = pd.DataFrame({
        "id": [1, 2, 3, 4],
        "pt_root_id": [NEURONS[0], NEURONS[2], NEURONS[5], GLIA],
        "valid_id": [NEURONS[0], NEURONS[2] - 100, NEURONS[5], GLIA],
        "status_axon": ["t", "t", "f", "t"],
        "status_dendrite": ["t", "t", "t", "t"],
    })
    out = run_load(server, proofread_axons_only=True)
    assert sorted(out.synapses["pre_pt_root_id"].unique()) == [NEURONS[0], NEURONS[2]]
    info = out.provenance["proofreading"]
    assert info["table"] == "proofreading_status_and_strategy"
    assert info["neurons_kept"] == 2 and info["edited_since_proofreading"] == 1


def test_max_synapses_per_neuron_is_a_seeded_sample():
    first = run_load(make_server(), max_synapses_per_neuron=2, seed=1).synapses
    again = run_load(make_server(), max_synapses_per_neuron=2, seed=1).synapses
    other = run_load(make_server(), max_synapses_per_neuron=2, seed=2).synapses
    assert first["pre_pt_root_id"].value_counts().max() == 2 and len(first) == 14
    assert first["id"].tolist() == again["id"].tolist()
    assert first["id"].tolist() != other["id"].tolist()
    assert first["id"].is_monotonic_increasing


def test_em_path_defaults():
    assert run_load(make_server()).em_path == "precomputed://gs://my-test-bucket/images"
    assert run_load(make_server(), em_path="precomputed://file:///em").em_path == (
        "precomputed://file:///em"
    )
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        make_server().register(rsps)
        out = cave.load("minnie65_public", VERSION, SYNAPSES, CELLS, client=make_client(),
                        backoff_seconds=0.0)
    assert out.em_path == cave.MINNIE65_EM_PATH


def test_missing_table_and_bad_settings_are_data_errors():
    with pytest.raises(DataError, match="refused"):
        with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
            make_server().register(rsps)
            cave.load(DATASTACK, VERSION, "no_such_table", CELLS, client=make_client(),
                      backoff_seconds=0.0)
    with pytest.raises(DataError, match="batch_size"):
        cave.load(DATASTACK, VERSION, SYNAPSES, CELLS, client=object(), batch_size=0)
