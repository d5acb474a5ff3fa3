"""The CAVE source, offline: real CAVEclient code against a fake materialization server."""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime, timezone
from email.utils import format_datetime

import numpy as np
import pandas as pd
import pytest
import requests
import responses

from cave_helpers import (
    DATASTACK,
    GLOBAL_SERVER,
    IMAGE_SOURCE,
    NUCLEUS_TABLE,
    ROOT_BASE,
    SEGMENTATION_SOURCE,
    VERSION,
    VIEWER_SITE,
    FakeMaterializationServer,
    as_reference_table,
    cell_type_table,
    datastack_info,
    make_client,
    rate_limited,
    synapse_table,
)
from paths import REPO
from synapse_ei import tables
from synapse_ei.curation import labels
from synapse_ei.errors import DataError
from synapse_ei.sources import cave

CELLS = "aibs_metamodel_celltypes_v661"
SYNAPSES = "synapses_pni_2"
NEURONS = [ROOT_BASE + i for i in range(1, 8)]  # 5 excitatory, 2 inhibitory
GLIA = ROOT_BASE + 8


def make_server(per_neuron: int = 4, **kwargs) -> FakeMaterializationServer:
    """The cell-type table as MICrONS stores it, a reference table on nucleus_detection_v0,
    and a synapse table with ``per_neuron`` synapses per cell."""
    parts = as_reference_table(cell_type_table())
    syn = synapse_table(NEURONS + [GLIA], [per_neuron] * 8)
    return FakeMaterializationServer(
        {CELLS: parts["reference"], NUCLEUS_TABLE: parts["nucleus"], SYNAPSES: syn},
        references={CELLS: NUCLEUS_TABLE}, **kwargs,
    )


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


@pytest.mark.parametrize("wording", ["materialized", "live"])
def test_the_servers_words_for_a_cut_answer_are_understood(wording):
    # Only the header tells: the server's limit (10) is below the 200,000 the client sends.
    server = make_server(row_limit=10, limit_wording=wording)
    out = run_load(server, batch_size=4)
    assert {r["body"]["limit"] for r in server.requests} == {cave.SERVER_ROW_LIMIT}
    assert out.synapses["id"].tolist() == expected_synapses(server)["id"].tolist()
    assert out.provenance["truncated_queries_split"] >= 1
    assert not any("Limited query" in n for n in out.provenance["server_notices"])


def test_an_answer_of_the_default_limit_counts_as_cut_without_a_header():
    # The public server's own limit and no Warning header (a proxy dropped it): 3 neurons of
    # 70,000 synapses fill a 3-root-id answer to exactly 200,000 rows.
    pre = NEURONS[:3]
    syn = synapse_table(pre + [GLIA], [70_000, 70_000, 70_000, 5])
    cells = cell_type_table(n_exc=3, n_inh=0)
    server = FakeMaterializationServer({CELLS: cells, SYNAPSES: syn}, limit_wording=None)
    out = run_load(server, batch_size=3)
    sizes = [len(r["body"]["filter_in_dict"][SYNAPSES]["pre_pt_root_id"])
             for r in synapse_requests(server)]
    assert sizes == [3, 1, 1, 1]
    assert len(out.synapses) == 210_000
    assert out.provenance["truncated_queries_split"] == 1


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


@pytest.mark.parametrize("convert_on_server", [True, False])
def test_positions_come_back_in_4_4_40_voxels(convert_on_server):
    native = make_server()
    syn = native.tables[SYNAPSES].copy()
    coarse = syn.copy()
    for column in [c for c in syn.columns if c.endswith(("_x", "_y"))]:
        coarse[column] = syn[column] // 2  # the same points stored at 8x8x40 nm
        syn[column] = coarse[column] * 2
    server = FakeMaterializationServer(
        {**native.tables, SYNAPSES: coarse}, references=native.references,
        resolutions={SYNAPSES: (8.0, 8.0, 40.0)}, convert_on_server=convert_on_server,
    )
    out = run_load(server)

    assert all(r["body"]["desired_resolution"] == [4.0, 4.0, 40.0] for r in server.requests)
    assert all(r["params"]["split_positions"] == ["True"] for r in server.requests)
    want = syn[syn["pre_pt_root_id"].isin(NEURONS)].sort_values("id")
    got = out.synapses
    for column in tables.CTR + tables.PRE_POSITION:
        assert got[column].tolist() == want[column].tolist(), column
        assert got[column].dtype == np.int64
    assert out.position_resolution == (4.0, 4.0, 40.0)


def test_network_errors_are_retried():
    server = make_server(failures=[requests.ConnectionError("reset"), 500])
    out = run_load(server, retries=3)
    assert out.provenance["network_retries"] == 2
    assert len(out.synapses) == 28


def test_the_rate_limit_is_waited_out_as_retry_after_asks(monkeypatch):
    slept = []
    monkeypatch.setattr(cave.time, "sleep", slept.append)
    # caveclient's session itself retries a 429 that has a Retry-After 3 times (urllib3 Retry,
    # total=3), so the 4th reaches the source.
    server = make_server(failures=[rate_limited("7")] * 4 + [rate_limited(None)]
                         + [rate_limited("86400")] * 4)
    out = run_load(server, retries=3, backoff_seconds=0.5)
    # Retry-After in seconds; none: the exponential backoff; a day: capped.
    assert slept == [7.0, 1.0, cave.MAX_RETRY_AFTER_SECONDS]
    assert out.synapses["id"].tolist() == expected_synapses(server)["id"].tolist()
    assert out.provenance["rate_limited_responses"] == 3


def test_a_run_the_server_keeps_throttling_says_so(monkeypatch):
    monkeypatch.setattr(cave.time, "sleep", lambda seconds: None)
    server = make_server(failures=[rate_limited("1")] * 20)
    with pytest.raises(DataError, match="throttled the run") as error:
        run_load(server, retries=2)
    assert GLOBAL_SERVER in str(error.value) and "429" in str(error.value)
    assert len(server.requests) == 3 * 4  # 3 attempts, each retried 3 times by caveclient


def test_retry_after_may_be_an_http_date():
    class Answer:
        headers = {"Retry-After": format_datetime(datetime(2026, 1, 1, 0, 0, 30,
                                                           tzinfo=timezone.utc), usegmt=True)}
    now = datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp()
    assert cave.retry_after_seconds(Answer(), now=now) == 30.0
    Answer.headers = {"Retry-After": "soon"}
    assert cave.retry_after_seconds(Answer(), now=now) is None


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
    with pytest.raises(DataError, match="save_token") as error:
        run_load(make_server(), client=client)
    # caveclient's save_token refuses to replace a saved (e.g. expired) token without it.
    assert "overwrite=True" in str(error.value)

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


def test_the_cap_applied_per_batch_keeps_what_capping_the_whole_table_keeps():
    server = make_server(per_neuron=9)
    whole = cave.cap_synapses_per_neuron(
        cave.tidy_synapse_answer(expected_synapses(server), SYNAPSES), 4, seed=3)
    for batch_size in (1, 3, 7):
        out = run_load(make_server(per_neuron=9), batch_size=batch_size,
                       max_synapses_per_neuron=4, seed=3)
        assert out.synapses["id"].tolist() == whole["id"].tolist(), batch_size
        assert out.provenance["rows"]["synapses_queried"] == 63
        assert out.provenance["synapses_dropped_by_cap"] == 63 - 28


def test_a_neurons_sample_does_not_depend_on_the_other_neurons_queried():
    # What makes capping each answer as it arrives safe: a neuron's sample is a function of its
    # own synapses and the seed (here: the same neuron queried alone or with six others).
    server = make_server(per_neuron=30)
    server.tables["proofreading_status_and_strategy"] = pd.DataFrame({
        "id": [1], "pt_root_id": [NEURONS[2]], "valid_id": [NEURONS[2]], "status_axon": ["t"],
    })
    alone = run_load(server, proofread_axons_only=True, max_synapses_per_neuron=5).synapses
    together = run_load(make_server(per_neuron=30), max_synapses_per_neuron=5).synapses
    mine = together[together["pre_pt_root_id"] == NEURONS[2]]
    assert len(alone) == 5 and set(alone["pre_pt_root_id"]) == {NEURONS[2]}
    assert alone["id"].tolist() == mine["id"].tolist()


def test_only_the_synapse_columns_the_workflow_uses_are_asked_for():
    server = make_server()
    out = run_load(server)
    wanted = ["id", "pre_pt_root_id", "post_pt_root_id", "ctr_pt_position", "pre_pt_position",
              "post_pt_position", "size"]
    assert cave.synapse_query_columns() == wanted
    assert all(r["body"]["select_columns"] == wanted for r in synapse_requests(server))
    # The cell-type table is read whole (its class column is the user's choice).
    assert all("select_columns" not in r["body"] for r in server.requests
               if r["table"] == CELLS)
    assert list(out.synapses.columns) == [*tables.SYNAPSE_REQUIRED, *tables.SYNAPSE_OPTIONAL]
    want = expected_synapses(server)
    assert out.synapses["size"].tolist() == want["size"].tolist()
    assert out.synapses[tables.POST_POSITION].to_numpy().tolist() == want[tables.POST_POSITION].to_numpy().tolist()


def test_a_reference_cell_type_table_is_queried_through_the_join():
    server = make_server()
    out = run_load(server)
    joins = [r for r in server.requests if "/table/" not in r["url"]]
    assert len(joins) == 1
    assert joins[0]["body"]["tables"] == [[CELLS, "target_id"], [NUCLEUS_TABLE, "id"]]
    assert joins[0]["body"]["suffix_map"] == {CELLS: "", NUCLEUS_TABLE: "_ref"}
    flat = cell_type_table()
    got = out.cell_types.sort_values("pt_root_id")
    assert got["pt_root_id"].tolist() == sorted(flat["pt_root_id"])
    assert dict(zip(got["pt_root_id"], got["classification_system"])) == dict(
        zip(flat["pt_root_id"], flat["classification_system"]))
    assert out.synapses["id"].tolist() == expected_synapses(server)["id"].tolist()
    mapping = cave.CELL_TYPE_TABLES[CELLS]
    _, stats = labels.label_synapses(out.synapses, out.cell_types, mapping["column"],
                                     mapping["classes"])
    assert stats["by_label"] == {"excitatory": 20, "inhibitory": 8}


def test_the_join_answers_with_suffixes_only_where_names_clash():
    server = make_server()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        server.register(rsps)
        frame = make_client().materialize.query_table(CELLS, split_positions=True)
    # The recorded tutorial answer's columns: the nucleus's pt_root_id unsuffixed, its id,
    # valid and created as id_ref, valid_ref, created_ref; superceded_id dropped.
    assert {"id", "id_ref", "valid_ref", "created_ref", "target_id", "pt_root_id",
            "pt_supervoxel_id", "pt_position_x", "classification_system"} <= set(frame.columns)
    assert "pt_root_id_ref" not in frame.columns and "superceded_id" not in frame.columns
    assert (frame["id_ref"] == frame["target_id"]).all()


def test_a_cut_cell_type_table_is_paged_by_its_own_id():
    server = make_server(per_neuron=2, row_limit=3)
    out = run_load(server, batch_size=1)
    assert sorted(out.cell_types["pt_root_id"]) == sorted(cell_type_table()["pt_root_id"])
    pages = [r["body"] for r in server.requests if "/table/" not in r["url"]]
    assert len(pages) > 1 and all(set(b.get("filter_greater_equal_dict", {CELLS: 0})) == {CELLS}
                                  for b in pages)


def test_cell_type_table_suggestions_match_the_published_values():
    mtypes = cave.CELL_TYPE_TABLES["aibs_metamodel_mtypes_v661_v2"]
    assert mtypes["classes"] == {"excitatory": "excitatory", "inhibitory": "inhibitory"}
    assert mtypes["cell_types"]["excitatory"] == [
        "L2a", "L2b", "L3a", "L3b", "L3c", "L4a", "L4b", "L4c", "L5a", "L5b", "L5ET", "L5NP",
        "L6a", "L6b", "L6c", "L6CT", "L6wm"]
    assert mtypes["cell_types"]["inhibitory"] == ["DTC", "ITC", "PTC", "STC"]
    column = cave.CELL_TYPE_TABLES["allen_v1_column_types_slanted_ref"]
    assert column["cell_types"]["inhibitory"] == ["BC", "BPC", "MC", "Unsure"]


def test_a_gs_image_source_becomes_a_public_https_url():
    assert cave.public_https_path("precomputed://gs://bucket/em") == (
        "precomputed://https://storage.googleapis.com/bucket/em")
    assert cave.public_https_path("gs://bucket/em") == (
        "precomputed://https://storage.googleapis.com/bucket/em")
    assert cave.public_https_path(cave.MINNIE65_EM_PATH) == cave.MINNIE65_EM_PATH


def test_config_readme_documents_every_cave_key():
    import yaml

    root = REPO
    schema = yaml.safe_load((root / "workflow/schemas/config.schema.yaml").read_text())
    keys = schema["properties"]["dataset"]["properties"]["cave"]["properties"]
    readme = (root / "config/README.md").read_text()
    missing = [k for k in keys if f"| `dataset.cave.{k}` |" not in readme]
    assert not missing
    # The cave source is here: no key may describe it as still to come.
    assert not re.search(r"arrives? (later|with its own)", readme)


def test_em_path_defaults():
    # caveclient's mock datastack's image source is precomputed://gs://my-test-bucket/images.
    assert run_load(make_server()).em_path == (
        "precomputed://https://storage.googleapis.com/my-test-bucket/images"
    )
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


def test_provenance_records_the_datastacks_viewer_sources():
    # The image source comes back as stored: caveclient 8.2.1's format_for="neuroglancer" turns
    # every precomputed source into None.
    out = run_load(make_server(), client=make_client(info=datastack_info((8.0, 8.0, 40.0))))
    assert out.provenance["viewer"] == {
        "image_source": IMAGE_SOURCE,
        "segmentation_source": SEGMENTATION_SOURCE,
        "viewer_resolution": [8.0, 8.0, 40.0],
        "viewer_site": VIEWER_SITE,
    }


def test_the_recorded_viewer_sources_make_links_in_the_datastacks_viewer():
    import neuroglancer

    from synapse_ei import viewer

    out = run_load(make_server(), client=make_client(info=datastack_info((8.0, 8.0, 40.0))))
    # What the query rule writes (scripts/query.py): the provenance and the positions' units.
    provenance = {**out.provenance, "position_resolution": list(out.position_resolution)}
    synapse = out.synapses.iloc[0]
    link = viewer.synapse_link(viewer.viewer_sources(provenance), synapse, "one synapse")
    assert link.startswith(VIEWER_SITE + "#!")
    state = neuroglancer.parse_url(link)
    assert state.layers["em"].source[0].url == IMAGE_SOURCE
    assert state.layers["segmentation"].source[0].url == SEGMENTATION_SOURCE
    assert set(state.layers["segmentation"].segments) == {int(synapse["pre_pt_root_id"])}
    # 4x4x40 nm table voxels in the datastack's 8x8x40 nm viewer voxels.
    np.testing.assert_allclose(
        state.position, synapse[tables.CTR].to_numpy(dtype=float) * [0.5, 0.5, 1.0]
    )
