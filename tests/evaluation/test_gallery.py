"""The gallery of right and wrong calls."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from evaluation_helpers import make_predictions
from synapse_ei.cutout.stacks import write_stack
from synapse_ei.errors import DataError
from synapse_ei.evaluation.gallery import gallery_examples, write_gallery


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


@pytest.mark.parametrize("architecture,kind,shape",
                         [("cnn2d", "2d", (12, 12)), ("r3d_18", "3d", (4, 10, 10))])
def test_gallery_figure_reads_the_test_cutouts(tmp_path, architecture, kind, shape):
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
                          tmp_path, architecture, "m", tmp_path / "gallery.png", per_group=3)
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
                      "cnn2d", "m", tmp_path / "gallery.png")


def test_gallery_page_links_every_tile_to_its_synapse(tmp_path):
    import re
    from html import unescape

    import neuroglancer

    from synapse_ei.outputs import write_json

    predictions = make_predictions(n_neurons=6, per_neuron=3)
    write_stack(tmp_path / "2d.tif", "2d",
                np.random.default_rng(0).integers(1, 255, (len(predictions), 8, 8), np.uint8))
    predictions[["id", "pre_pt_root_id", "split", "label"]].assign(
        path_2d="2d.tif", stack_index=np.arange(len(predictions))
    ).to_parquet(tmp_path / "manifest.parquet")
    predictions.to_parquet(tmp_path / "predictions.parquet")
    positions = pd.DataFrame({"id": predictions["id"], "ctr_pt_position_x": predictions["id"] * 2,
                              "ctr_pt_position_y": 100, "ctr_pt_position_z": 7})
    positions.to_parquet(tmp_path / "synapses.parquet")
    write_json(tmp_path / "provenance.json", {
        "source": "synthetic", "position_resolution": [4, 4, 40],
        "em_path": "precomputed://file:///em"})
    shown = write_gallery(
        tmp_path / "predictions.parquet", tmp_path / "manifest.parquet", tmp_path, "cnn2d", "m",
        tmp_path / "gallery.png", per_group=2, html_path=tmp_path / "gallery.html",
        provenance_path=tmp_path / "provenance.json", synapses_path=tmp_path / "synapses.parquet",
    )
    page = (tmp_path / "gallery.html").read_text()
    assert page.count("<img src='data:image/png;base64,") == sum(shown.values())
    links = [unescape(h) for h in re.findall(r"<figure><a href='([^']+)'", page)]
    assert len(links) == sum(shown.values())
    by_id = predictions.set_index("id")
    for link in links:
        state = neuroglancer.parse_url(link)
        (point,) = state.layers["synapses"].annotations
        synapse = int(point.id)
        assert f"synapse {synapse}, p(inh)" in page
        np.testing.assert_allclose(state.position, [2 * synapse, 100, 7])
        assert by_id.loc[synapse, "split"] == "test"
    assert "no segmentation" in page
