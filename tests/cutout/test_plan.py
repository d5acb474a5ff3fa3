"""Planning the cutouts: shards, and whether the positions fit the volume."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cutout_helpers import CTR_COLUMNS
from synapse_ei.cutout.plan import check_positions, plan_shards
from synapse_ei.cutout.volume import open_volume, volume_info
from synapse_ei.errors import DataError
from volume_helpers import TABLE_RESOLUTION, make_synapses, make_volume, random_centres

# ------------------------------------------------------------------------------ plan_shards


def test_plan_covers_every_row_once_in_near_equal_shards(raw_volume):
    synapses = raw_volume[3]
    plan = plan_shards(synapses, 5)
    pd.testing.assert_frame_equal(plan.drop(columns="shard"), synapses)
    assert plan["shard"].dtype == np.int64
    counts = plan["shard"].value_counts().sort_index()
    assert list(counts.index) == [0, 1, 2, 3, 4]
    assert counts.max() - counts.min() <= 1


def test_plan_is_deterministic_and_independent_of_row_order(raw_volume):
    synapses = raw_volume[3]
    first = plan_shards(synapses, 4)
    shuffled = plan_shards(synapses.sample(frac=1.0, random_state=3), 4)
    by_id = shuffled.set_index("id").loc[first["id"], "shard"].to_numpy()
    np.testing.assert_array_equal(first["shard"].to_numpy(), by_id)
    pd.testing.assert_frame_equal(first, plan_shards(synapses, 4))


def test_more_shards_than_synapses_is_refused_with_both_numbers(raw_volume):
    """30 shards for 24 synapses would run 6 jobs that cut nothing."""
    synapses = raw_volume[3]
    assert len(synapses) == 24
    with pytest.raises(DataError, match=r"cutout\.shards: 30 shards for 24 synapse\(s\) would "
                       r"run 6 cutout job\(s\) with nothing to cut\. Set cutout\.shards to at "
                       r"most 24"):
        plan_shards(synapses, 30)
    with pytest.raises(DataError, match=r"predict\.shards: 4 shards for 3"):
        plan_shards(synapses.head(3), 4, key="predict.shards")
    plan = plan_shards(synapses, 24)  # one synapse per shard is the most there can be
    assert sorted(plan["shard"]) == list(range(24))
    with pytest.raises(DataError, match="cutout.shards"):
        plan_shards(raw_volume[3], 0)


def test_duplicate_ids_are_refused(raw_volume):
    synapses = raw_volume[3]
    doubled = pd.concat([synapses, synapses.head(1)], ignore_index=True)
    with pytest.raises(DataError, match=f"id {synapses['id'].iloc[0]} appears more than once"):
        plan_shards(doubled, 2)


def _overlap_volume(positions: np.ndarray, shards: np.ndarray, n_shards: int) -> float:
    """Summed pairwise intersection volume of the shards' bounding boxes."""
    boxes = [
        (positions[shards == s].min(axis=0), positions[shards == s].max(axis=0))
        for s in range(n_shards)
    ]
    total = 0.0
    for i in range(n_shards):
        for j in range(i + 1, n_shards):
            extent = np.minimum(boxes[i][1], boxes[j][1]) - np.maximum(boxes[i][0], boxes[j][0])
            total += float(np.prod(np.clip(extent, 0, None)))
    return total


def test_shards_are_spatially_coherent():
    rng = np.random.default_rng(0)
    positions = rng.integers(0, 100_000, size=(2000, 3))
    synapses = pd.DataFrame(
        {"id": np.arange(2000)}
        | {f"ctr_pt_position_{axis}": positions[:, k] for k, axis in enumerate("xyz")}
    )
    plan = plan_shards(synapses, 8)
    coherent = _overlap_volume(positions, plan["shard"].to_numpy(), 8)
    random = _overlap_volume(positions, rng.permutation(plan["shard"].to_numpy()), 8)
    assert coherent < 0.25 * random


# ------------------------------------------------------------------------------ positions


def _corner_volume(tmp_path):
    """A volume that starts at 0, as many real precomputed volumes do."""
    path, _, _ = make_volume(tmp_path, "origin", offset=(0, 0, 0), with_mip1=False)
    return volume_info(open_volume(path, 0))


def test_positions_that_also_fit_at_twice_the_resolution_stop_the_plan(tmp_path):
    info = _corner_volume(tmp_path)
    centres = random_centres(200, seed=13, offset=(0, 0, 0))  # 8x8x40 voxels of the volume
    export = make_synapses(centres)
    export[CTR_COLUMNS] = centres  # an export in 8x8x40 nm voxels
    # Read as CAVE's 4x4x40 they land in the corner nearest the origin: inside, wrong place.
    with pytest.raises(DataError) as error:
        check_positions(export, info, (4, 4, 40), ask_to_confirm=True)
    message = str(error.value)
    assert "[8.0, 8.0, 40.0] nm" in message and "position_resolution" in message
    assert "dataset.files.confirm_position_resolution: true" in message
    assert check_positions(export, info, (8, 8, 40), ask_to_confirm=True) == []
    # Confirmed (or a source whose units are known): cut, warning that it is a corner.
    (warning,) = check_positions(export, info, (4, 4, 40), ask_to_confirm=False)
    assert "of its xy area" in warning and "position_resolution" in warning


def test_positions_mostly_outside_the_volume_stop_the_plan_naming_a_fitting_resolution(
    tmp_path
):
    info = _corner_volume(tmp_path)
    centres = random_centres(200, seed=14, offset=(0, 0, 0))
    export = make_synapses(centres)  # 4x4x40 voxels
    with pytest.raises(DataError, match=r"lie outside it.*At \[4.0, 4.0, 40.0\] nm, 100% "
                                        r"would be inside.*dataset.files.position_resolution"):
        check_positions(export, info, (8, 8, 40), ask_to_confirm=True)
    in_nm = export.assign(**{f"ctr_pt_position_{a}": export[f"ctr_pt_position_{a}"] * r
                             for a, r in zip("xyz", TABLE_RESOLUTION)})
    with pytest.raises(DataError, match=r"lie outside it.*Check the units"):
        check_positions(in_nm, info, TABLE_RESOLUTION, ask_to_confirm=False)
    assert check_positions(export, info, TABLE_RESOLUTION, ask_to_confirm=True) == []


def test_a_region_in_a_far_corner_is_a_warning_only(raw_volume):
    path = raw_volume[0]
    info = volume_info(open_volume(path, 0))  # starts far from 0: twice the units cannot fit
    corner = make_synapses(random_centres(30, seed=15, size=(60, 60, 32)))
    (warning,) = check_positions(corner, info, TABLE_RESOLUTION, ask_to_confirm=True)
    assert "cover" in warning
