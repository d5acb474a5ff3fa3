"""The synthetic MICrONS-like dataset: schemas, warts of the real tables, the EM volume, classes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from synapse_ei.config import SCHEMA
from synapse_ei.errors import DataError
from synapse_ei.sources import SourceTables
from synapse_ei.sources.synthetic import render
from synapse_ei.sources.synthetic.generator import (
    _draw_tables,
    CHUNK_SIZE,
    EM_RESOLUTION,
    EXCITATORY_TYPES,
    INHIBITORY_TYPES,
    load,
    NEURON_TRAITS,
    NONNEURON_TYPES,
    synthesize,
    VOXEL_OFFSET,
)
from synapse_ei.tables import CTR, POST_POSITION, PRE_POSITION

N_SYNAPSES = 200
N_NEURONS = 30
FRACTION = 0.2


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synthetic")
    stats = synthesize(out, N_SYNAPSES, N_NEURONS, FRACTION, seed=5, neuron_traits=0.0)
    return out, stats


@pytest.fixture(scope="module")
def tables(dataset: tuple[Path, dict]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    out, _ = dataset
    return (
        pd.read_parquet(out / "synapses.parquet"),
        pd.read_parquet(out / "cell_types.parquet"),
        pd.read_parquet(out / "truth.parquet"),
    )


@pytest.fixture(scope="module")
def volume(dataset: tuple[Path, dict]) -> tuple[object, np.ndarray]:
    from cloudvolume import CloudVolume

    out, _ = dataset
    vol = CloudVolume(f"file://{out / 'em'}", progress=False)
    return vol, np.asarray(vol[:, :, :])[..., 0]


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "stats.json"
    }


def test_synapse_table_has_the_cave_schema_with_int64_ids_and_positions(tables):
    synapses, _, _ = tables
    expected = ["id", "pre_pt_root_id", "post_pt_root_id", *CTR, *PRE_POSITION, *POST_POSITION, "size"]
    assert list(synapses.columns) == expected
    assert all(synapses[c].dtype == np.int64 for c in expected)
    assert len(synapses) == N_SYNAPSES
    assert synapses.id.is_unique
    nonzero = synapses.pre_pt_root_id[synapses.pre_pt_root_id != 0]
    assert nonzero.astype(str).str.fullmatch(r"864691135\d{9}").all()
    assert (synapses["size"] > 0).all()


def test_table_positions_are_twice_the_volume_voxel_in_xy(tables):
    synapses, _, truth = tables
    merged = synapses.merge(truth, on="id")
    assert (merged.ctr_pt_position_x == 2 * (merged.vx + VOXEL_OFFSET[0])).all()
    assert (merged.ctr_pt_position_y == 2 * (merged.vy + VOXEL_OFFSET[1])).all()
    assert (merged.ctr_pt_position_z == merged.vz + VOXEL_OFFSET[2]).all()
    # Pre and post points lie on opposite sides of the cleft, along its normal.
    pre = merged[PRE_POSITION].to_numpy() - merged[CTR].to_numpy()
    post = merged[POST_POSITION].to_numpy() - merged[CTR].to_numpy()
    assert ((pre * post * [4, 4, 40]).sum(axis=1) < 0).mean() > 0.95


def test_cell_type_table_has_the_real_value_sets(tables):
    _, cell_types, _ = tables
    assert list(cell_types.columns) == ["pt_root_id", "cell_type", "classification_system"]
    assert cell_types.pt_root_id.dtype == np.int64
    known = set(EXCITATORY_TYPES) | set(INHIBITORY_TYPES) | set(NONNEURON_TYPES)
    assert set(cell_types.cell_type) <= known
    assert set(cell_types.classification_system) == {
        "excitatory_neuron",
        "inhibitory_neuron",
        "nonneuron",
    }
    by_system = cell_types.groupby("classification_system").cell_type.agg(set)
    assert by_system["excitatory_neuron"] <= set(EXCITATORY_TYPES)
    assert by_system["inhibitory_neuron"] <= set(INHIBITORY_TYPES)


def test_tables_carry_the_warts_of_the_real_data(tables):
    synapses, cell_types, _ = tables
    typed = set(cell_types.pt_root_id)
    pre = synapses.pre_pt_root_id
    orphan = (~pre.isin(typed)) & (pre != 0)
    assert 0.05 <= orphan.mean() <= 0.2
    assert (pre == 0).sum() >= 1
    glia = set(cell_types.pt_root_id[cell_types.classification_system == "nonneuron"])
    assert pre.isin(glia).sum() >= 1
    duplicated = set(cell_types.pt_root_id[cell_types.pt_root_id.duplicated()])
    assert pre.isin(duplicated).sum() >= 1
    # Post cells are typed too (a connectivity baseline needs their classes).
    assert synapses.post_pt_root_id.isin(typed).mean() > 0.8


def test_inhibitory_fraction_holds_on_cleanly_labelled_synapses(tables):
    synapses, cell_types, _ = tables
    counts = cell_types.pt_root_id.value_counts()
    single = cell_types[cell_types.pt_root_id.isin(counts[counts == 1].index)]
    neurons = single[single.classification_system != "nonneuron"]
    labelled = synapses.merge(neurons, left_on="pre_pt_root_id", right_on="pt_root_id")
    fraction = (labelled.classification_system == "inhibitory_neuron").mean()
    assert fraction == pytest.approx(FRACTION, abs=0.01)
    assert len(labelled) > 0.8 * N_SYNAPSES


def test_truth_matches_cell_types_for_labelled_neurons(tables):
    synapses, cell_types, truth = tables
    merged = synapses.merge(truth, on="id")
    neuron = merged[merged.presynaptic_kind == "neuron"].merge(
        cell_types, left_on="pre_pt_root_id", right_on="pt_root_id"
    )
    assert (neuron.classification_system == neuron.true_class + "_neuron").all()


def test_same_seed_gives_byte_identical_output_and_another_seed_differs(tmp_path):
    first, second, other = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    synthesize(first, 40, 8, 0.2, seed=3, neuron_traits=0.0)
    synthesize(second, 40, 8, 0.2, seed=3, neuron_traits=0.0)
    synthesize(other, 40, 8, 0.2, seed=4, neuron_traits=0.0)
    assert _tree_digest(first) == _tree_digest(second)
    assert _tree_digest(first)["synapses.parquet"] != _tree_digest(other)["synapses.parquet"]
    assert not list(first.glob(".em.*")), "no temporary volume left behind"


def test_volume_is_a_jpeg_precomputed_image_at_8x8x40(dataset, volume):
    out, stats = dataset
    vol, image = volume
    assert vol.info["type"] == "image"
    assert vol.info["data_type"] == "uint8"
    scale = vol.info["scales"][0]
    assert scale["encoding"] == "jpeg"
    assert list(scale["resolution"]) == list(EM_RESOLUTION)
    assert list(scale["voxel_offset"]) == list(VOXEL_OFFSET)
    assert list(scale["chunk_sizes"][0]) == list(CHUNK_SIZE)
    assert list(vol.shape[:3]) == stats["volume_shape_xyz"]
    # Osmium-like contrast: mostly light cytoplasm, some dark membrane.
    assert 120 < image.mean() < 200
    assert (image < 90).mean() > 0.03


def test_synapses_spread_through_the_volume_with_a_few_near_the_edge(tables, volume):
    _, _, truth = tables
    vol, _ = volume
    shape = np.array(vol.shape[:3])
    centre = truth[["vx", "vy", "vz"]].to_numpy()
    assert ((centre >= 0) & (centre < shape)).all()
    margin = np.minimum(centre, shape - 1 - centre)
    near_edge = (margin[:, :2] < 32).any(axis=1)
    assert 1 <= near_edge.sum() <= 0.05 * len(truth)
    assert (margin[:, 2] >= 0).all()


def _profile_along_normal(image: np.ndarray, truth: pd.DataFrame, offsets_px: np.ndarray):
    """Mean intensity at points along each cleft normal in its central section."""
    values = []
    for syn in truth.itertuples():
        direction = np.array([np.cos(syn.theta), np.sin(syn.theta)])
        pts = np.array([syn.vx, syn.vy]) + offsets_px[:, None] * direction[None]
        ix, iy = np.rint(pts).astype(int).T
        values.append(image[ix, iy, syn.vz].astype(float))
    return np.array(values)


def test_image_at_a_synapse_shows_a_thicker_darker_psd_for_excitatory(tables, volume):
    _, _, truth = tables
    _, image = volume
    inside = truth[(truth.vx > 20) & (truth.vx < image.shape[0] - 20) & (np.abs(truth.phi) < 0.5)]
    # Post side is against the normal: 3-5 px (24-40 nm) beyond the post membrane.
    post_side = _profile_along_normal(image, inside, -np.array([3.0, 4.0, 5.0])).mean(axis=1)
    inh = (inside.true_class == "inhibitory").to_numpy()
    assert inh.sum() >= 5 and (~inh).sum() >= 5
    assert post_side[~inh].mean() < post_side[inh].mean() - 5
    # The cleft itself is lighter than the membranes beside it.
    across = _profile_along_normal(image, inside, np.array([-1.5, 0.0, 1.5, -8.0, 8.0]))
    assert across[:, 1].mean() > across[:, [0, 2]].mean()


def test_load_returns_the_synthetic_source(dataset):
    out, stats = dataset
    tables = load(out)
    assert isinstance(tables, SourceTables)
    assert tables.em_path == f"precomputed://file://{(out / 'em').resolve()}"
    assert tables.position_resolution == (4.0, 4.0, 40.0)
    assert tables.provenance["source"] == "synthetic"
    assert tables.provenance["seed"] == 5
    assert tables.provenance["n_synapses"] == N_SYNAPSES == stats["n_synapses"]
    assert tables.synapses.pre_pt_root_id.dtype == np.int64


def test_load_of_a_missing_dataset_says_to_run_synthesize(tmp_path):
    with pytest.raises(DataError, match="synthesize"):
        load(tmp_path / "nowhere")


def test_bad_arguments_raise_data_error(tmp_path):
    with pytest.raises(DataError, match="inhibitory_fraction"):
        synthesize(tmp_path, 100, 10, 1.5, seed=0, neuron_traits=0.0)
    with pytest.raises(DataError, match="n_synapses"):
        synthesize(tmp_path, 5, 10, 0.2, seed=0, neuron_traits=0.0)


def test_bad_neuron_trait_strength_raises_data_error(tmp_path):
    with pytest.raises(DataError, match="neuron_traits"):
        synthesize(tmp_path, 100, 10, 0.2, seed=0, neuron_traits=-1.0)


# ----------------------------------------------------------------------------------------------
# Per-neuron appearance traits (dataset.synthetic.neuron_traits)
# ----------------------------------------------------------------------------------------------

#: Truth columns that carry a neuron trait into the renderer, and their value without traits.
TRAIT_COLUMNS = {"mitochondria_rate": 0.9, "membrane_od_scale": 1.0, "axoplasm_od": 0.0}

#: sha256 of the rendered volume (every slab's uint8 array) of _draw_tables(3, 60, 8, 0.2), as
#: the generator rendered it before it had neuron traits (commit b74aca4).
VOLUME_BEFORE_TRAITS = "cd74ec2e357389453e3eaba96dfeaa56c44c738fd5313074ba44ca83112a2845"


def _volume_digest(truth: pd.DataFrame, shape: tuple[int, int, int], seed: int) -> str:
    digest = hashlib.sha256()
    cache: dict = {}
    for z0, z1 in render.iter_slabs(shape, CHUNK_SIZE[2]):
        digest.update(render.render_slab(truth, shape, z0, z1, seed, cache).tobytes())
    return digest.hexdigest()


def test_zero_trait_strength_renders_the_volume_of_before_the_traits_byte_for_byte():
    _, _, truth, shape, _ = _draw_tables(3, 60, 8, 0.2, 0.0)
    for column, neutral in TRAIT_COLUMNS.items():
        assert (truth[column] == neutral).all(), column
    assert _volume_digest(truth, shape, 3) == VOLUME_BEFORE_TRAITS


@pytest.fixture(scope="module")
def with_and_without_traits():
    without = _draw_tables(5, N_SYNAPSES, N_NEURONS, FRACTION, 0.0)
    with_traits = _draw_tables(5, N_SYNAPSES, N_NEURONS, FRACTION, 1.0)
    return without, with_traits


def test_traits_are_drawn_once_per_neuron_and_differ_between_neurons(with_and_without_traits):
    _, (_, _, truth, _, _) = with_and_without_traits
    neurons = truth[truth.presynaptic_kind == "neuron"]
    per_neuron = neurons.groupby("axon_index")[list(TRAIT_COLUMNS)]
    assert (per_neuron.nunique() == 1).all().all(), "a trait varies within a neuron"
    traits = per_neuron.first()
    assert len(traits) >= 20
    for column in TRAIT_COLUMNS:
        assert traits[column].nunique() == len(traits), column
    # The multiplicative traits scatter around 1 by about their documented strength.
    membrane = np.log(traits.membrane_od_scale).std()
    assert membrane == pytest.approx(NEURON_TRAITS["membrane_darkness"], rel=0.4)
    # Vesicle counts per bouton follow the neuron's vesicle density: more spread between neurons.
    without, _ = with_and_without_traits
    spread = [
        np.log(
            t[2][t[2].presynaptic_kind == "neuron"].groupby("axon_index").n_vesicles.mean()
        ).std()
        for t in (without, (None, None, truth))
    ]
    assert spread[1] > spread[0] + 0.15


def test_traits_leave_the_tables_and_the_class_cues_alone(with_and_without_traits):
    (syn0, types0, truth0, shape0, _), (syn1, types1, truth1, shape1, _) = with_and_without_traits
    pd.testing.assert_frame_equal(syn0, syn1)
    pd.testing.assert_frame_equal(types0, types1)
    assert shape0 == shape1
    # The demo's size: the vesicle counts' Poisson draws must not shift the ids and sizes after.
    demo = [_draw_tables(7, 2400, 160, 0.15, strength)[0] for strength in (0.0, 1.0)]
    pd.testing.assert_frame_equal(*demo)
    for column in ("true_class", "psd_thickness_nm", "psd_od", "vesicle_flatness", "theta"):
        pd.testing.assert_series_equal(truth0[column], truth1[column])


def _neuron_share_of_variance(values: pd.Series, neuron: pd.Series) -> float:
    """Between-neuron variance of a per-synapse image feature over its total variance."""
    return float(values.groupby(neuron).transform("mean").var() / values.var())


def test_rendered_synapses_of_one_neuron_look_alike_with_traits(with_and_without_traits):
    """The point of the traits: a model can tell a neuron from its synapses' images."""
    shares = []
    for _, _, truth, shape, _ in with_and_without_traits:
        rows = truth[truth.presynaptic_kind == "neuron"].head(120)
        # Mean OD of the bouton (membrane, axoplasm, mitochondria), in the synapse box.
        feature = []
        for syn in rows.itertuples(index=False):
            drawn = render.render_synapse(syn, shape, seed=5)
            feature.append(float(drawn.od[drawn.inside > 0.5].mean()))
        shares.append(
            _neuron_share_of_variance(pd.Series(feature), rows.axon_index.reset_index(drop=True))
        )
    assert shares[1] > shares[0] + 0.2


def test_trait_strength_has_a_documented_schema_default():
    schema = yaml.safe_load(SCHEMA.read_text())
    synthetic = schema["properties"]["dataset"]["properties"]["synthetic"]["properties"]
    assert synthetic["neuron_traits"]["default"] > 0
    readme = (Path(__file__).resolve().parents[2] / "config" / "README.md").read_text()
    assert "`dataset.synthetic.neuron_traits`" in readme
