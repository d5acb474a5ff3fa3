"""Neuroglancer links: every state is parsed back with neuroglancer and checked."""

from __future__ import annotations

import neuroglancer
import numpy as np
import pandas as pd
import pytest

from synapse_ei import viewer
from synapse_ei.errors import DataError
from synapse_ei.outputs import write_json
from synapse_ei.tables import CTR

ROOT = 864691135000000000
#: A CAVE provenance whose viewer voxels (8x8x40 nm) differ from the table's (4x4x40 nm).
CAVE = {
    "source": "cave",
    "position_resolution": [4.0, 4.0, 40.0],
    "em_path": "precomputed://https://example.org/em",
    "viewer": {
        "image_source": "precomputed://gs://bucket/em",
        "segmentation_source": "graphene://https://example.org/segmentation/table/v1",
        "viewer_resolution": [8.0, 8.0, 40.0],
        "viewer_site": "https://viewer.example.org/",
    },
}
#: A synthetic provenance: EM at 8x8x40 nm on disk, table positions in 4x4x40 nm voxels.
SYNTHETIC = {
    "source": "synthetic",
    "position_resolution": [4.0, 4.0, 40.0],
    "em_path": "precomputed://file:///data/results/synthetic/em",
}


def synapses(n_neurons: int = 3, per_neuron: int = 4) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(query synapse table, predictions) of ``n_neurons`` neurons."""
    ids = np.arange(1, n_neurons * per_neuron + 1)
    table = pd.DataFrame({"id": ids, "ctr_pt_position_x": 1000 + 10 * ids,
                          "ctr_pt_position_y": 2000 + ids, "ctr_pt_position_z": 300 + ids})
    predictions = pd.DataFrame({
        "id": ids,
        "pre_pt_root_id": ROOT + (ids - 1) // per_neuron,
        "split": "test",
        "label": np.where((ids - 1) // per_neuron == 0, "inhibitory", "excitatory"),
        "prob_inhibitory": np.linspace(0.05, 0.95, len(ids)),
    })
    return table, predictions


def parsed(link: str) -> neuroglancer.ViewerState:
    return neuroglancer.parse_url(link)


def test_state_is_in_the_viewer_voxels_of_the_datastack():
    sources = viewer.viewer_sources(CAVE)
    synapse = {"id": 7, "pre_pt_root_id": ROOT, "ctr_pt_position_x": 1000,
               "ctr_pt_position_y": 500, "ctr_pt_position_z": 30}
    state = parsed(viewer.synapse_link(sources, synapse, "synapse 7"))
    # Table voxels of 4x4x40 nm in viewer voxels of 8x8x40 nm: x and y halve.
    np.testing.assert_allclose(state.position, [500, 250, 30])
    np.testing.assert_allclose(state.dimensions.scales, [8e-9, 8e-9, 40e-9])
    assert [layer.name for layer in state.layers] == ["em", "segmentation", "synapses"]
    assert state.layers["em"].source[0].url == "precomputed://gs://bucket/em"
    assert set(state.layers["segmentation"].segments) == {ROOT}
    (point,) = state.layers["synapses"].annotations
    np.testing.assert_allclose(point.point, [500, 250, 30])
    assert point.id == "7"
    assert viewer.synapse_link(sources, synapse, "s").startswith("https://viewer.example.org/#!")


def test_local_volume_is_named_by_its_serving_url_and_has_no_segmentation():
    sources = viewer.viewer_sources(SYNTHETIC, local_url="http://localhost:9000/")
    synapse = {"id": 1, "pre_pt_root_id": ROOT, "ctr_pt_position_x": 64,
               "ctr_pt_position_y": 32, "ctr_pt_position_z": 5}
    state = parsed(viewer.synapse_link(sources, synapse, "synapse 1"))
    # The viewer works in the table's 4x4x40 nm voxels, not the 8x8x40 nm EM mip's.
    np.testing.assert_allclose(state.position, [64, 32, 5])
    np.testing.assert_allclose(state.dimensions.scales, [4e-9, 4e-9, 40e-9])
    assert [layer.name for layer in state.layers] == ["em", "synapses"]
    assert state.layers["em"].source[0].url == "precomputed://http://localhost:9000"
    assert "no segmentation" in state.title
    assert viewer.synapse_link(sources, synapse, "s").startswith(viewer.DEFAULT_SITE + "/#!")


@pytest.mark.parametrize("segmentation,layer", [
    ("precomputed://gs://bucket/seg", "precomputed://gs://bucket/seg"),
    ("gs://bucket/seg", "precomputed://gs://bucket/seg"),
    ("graphene://https://example.org/segmentation/table/v1",
     "graphene://https://example.org/segmentation/table/v1"),
])
def test_a_files_source_with_a_segmentation_selects_the_presynaptic_neuron(segmentation, layer):
    files = {"source": "files", "position_resolution": [4.0, 4.0, 40.0],
             "em_path": "precomputed://gs://bucket/em", "segmentation_path": segmentation}
    sources = viewer.viewer_sources(files)
    synapse = {"id": 3, "pre_pt_root_id": ROOT, "ctr_pt_position_x": 64,
               "ctr_pt_position_y": 32, "ctr_pt_position_z": 5}
    state = parsed(viewer.synapse_link(sources, synapse, "synapse 3"))
    assert [layer.name for layer in state.layers] == ["em", "segmentation", "synapses"]
    assert state.layers["segmentation"].source[0].url == layer
    assert set(state.layers["segmentation"].segments) == {ROOT}
    assert "no segmentation" not in (state.title or "")
    # Without the key the link still opens, and says why it has no segmentation.
    bare = parsed(viewer.synapse_link(viewer.viewer_sources({**files, "segmentation_path": None}),
                                      synapse, "synapse 3"))
    assert [layer.name for layer in bare.layers] == ["em", "synapses"]
    assert "segmentation_path is not set" in bare.title


@pytest.mark.parametrize("em_path,expected", [
    ("precomputed://https://example.org/em", "precomputed://https://example.org/em"),
    ("gs://bucket/em", "precomputed://gs://bucket/em"),
    ("zarr://https://example.org/em.zarr", "zarr://https://example.org/em.zarr"),
    ("/data/em", "precomputed://http://localhost:1337"),
    ("file:///data/em", "precomputed://http://localhost:1337"),
])
def test_served_source(em_path, expected):
    assert viewer.served_source(em_path) == expected


def test_cave_provenance_without_viewer_sources_says_to_rerun_the_query():
    old = {key: value for key, value in CAVE.items() if key != "viewer"}
    with pytest.raises(DataError, match="forcerun query"):
        viewer.viewer_sources(old, where="results/query/provenance.json")


def test_neuron_links_draw_each_neurons_synapses_worst_first_and_capped():
    table, predictions = synapses(n_neurons=3, per_neuron=4)
    links = viewer.neuron_links(predictions, table, viewer.viewer_sources(CAVE), max_points=3)
    assert links["pre_pt_root_id"].tolist() == [ROOT, ROOT + 1, ROOT + 2]
    assert links["n_synapses"].tolist() == [4, 4, 4]
    assert links["n_points"].tolist() == [3, 3, 3]
    for root, link in zip(links["pre_pt_root_id"], links["neuroglancer_link"]):
        state = parsed(link)
        assert set(state.layers["segmentation"].segments) == {root}
        mine = predictions[predictions["pre_pt_root_id"] == root]
        error = np.where(mine["label"] == "inhibitory", 1 - mine["prob_inhibitory"],
                         mine["prob_inhibitory"])
        worst = mine["id"].to_numpy()[np.argsort(-error, kind="stable")][:3]
        points = state.layers["synapses"].annotations
        assert [int(p.id) for p in points] == worst.tolist()
        first = table.set_index("id").loc[worst[0], CTR].to_numpy()
        np.testing.assert_allclose(state.position, first * [0.5, 0.5, 1])
        np.testing.assert_allclose(points[0].point, first * [0.5, 0.5, 1])


def test_neuron_links_name_a_synapse_without_position():
    table, predictions = synapses()
    with pytest.raises(DataError, match="synapse 5 has no position"):
        viewer.neuron_links(predictions, table[table["id"] != 5], viewer.viewer_sources(CAVE))


def test_test_links_one_row_per_test_neuron(tmp_path):
    table, predictions = synapses(n_neurons=3)
    predictions.loc[predictions["pre_pt_root_id"] == ROOT + 2, "split"] = "val"
    predictions.to_parquet(tmp_path / "predictions.parquet")
    table.to_parquet(tmp_path / "synapses.parquet")
    write_json(tmp_path / "provenance.json", SYNTHETIC)
    n = viewer.write_test_links(tmp_path / "predictions.parquet", tmp_path / "synapses.parquet",
                                tmp_path / "provenance.json", tmp_path / "links.csv")
    links = pd.read_csv(tmp_path / "links.csv")
    assert n == 2
    assert links["pre_pt_root_id"].tolist() == [ROOT, ROOT + 1]  # the val neuron is not shown
    assert links["label"].tolist() == ["inhibitory", "excitatory"]
    state = parsed(links["neuroglancer_link"].iloc[0])
    assert len(state.layers["synapses"].annotations) == 4


def test_unlabelled_links_one_per_axon_with_its_root_id_selected(tmp_path):
    table, predictions = synapses(n_neurons=2, per_neuron=3)
    predictions = predictions[["id", "pre_pt_root_id", "prob_inhibitory"]]
    neurons = pd.DataFrame({"pre_pt_root_id": [ROOT, ROOT + 1], "n_synapses": [3, 3],
                            "predicted_label": ["excitatory", "inhibitory"]})
    neurons.to_csv(tmp_path / "neurons.csv", index=False)
    predictions.to_parquet(tmp_path / "predictions.parquet")
    table.to_parquet(tmp_path / "synapses.parquet")
    write_json(tmp_path / "provenance.json", CAVE)
    viewer.write_unlabelled_links(tmp_path / "neurons.csv", tmp_path / "predictions.parquet",
                                  tmp_path / "synapses.parquet", tmp_path / "provenance.json",
                                  tmp_path / "links.csv")
    links = pd.read_csv(tmp_path / "links.csv", dtype={"pre_pt_root_id": "int64"})
    assert links.columns.tolist() == [*neurons.columns, "n_points", "neuroglancer_link"]
    for root, link in zip(links["pre_pt_root_id"], links["neuroglancer_link"]):
        state = parsed(link)
        assert set(state.layers["segmentation"].segments) == {root}
        ids = predictions.loc[predictions["pre_pt_root_id"] == root, "id"]
        assert sorted(int(p.id) for p in state.layers["synapses"].annotations) == ids.tolist()
