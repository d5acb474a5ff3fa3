"""Volumes and helpers shared by the cutout and dataset tests; the volumes are fixtures
(tests/conftest.py makes them available to every test)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from synapse_ei.cutout.shard import cut_shard
from volume_helpers import (
    OFFSET,
    TABLE_RESOLUTION,
    make_synapses,
    make_volume,
    random_centres,
    volume_data,
)

# Non-square, all-different sizes so a swapped axis changes the shape.
SIZE_2D = (12, 10)  # (X, Y)
SIZE_3D = (8, 6, 4)  # (X, Y, Z)
MARKER = 255  # the random data stays below 250, so the marker is unique


@pytest.fixture(scope="module")
def raw_volume(tmp_path_factory):
    """A raw volume with a unique marker voxel at every synapse centre, and its synapses."""
    centres = random_centres(24, seed=1)
    data = volume_data(seed=1)
    local = centres - np.array(OFFSET)
    data[local[:, 0], local[:, 1], local[:, 2]] = MARKER
    path, data, mip1 = make_volume(tmp_path_factory.mktemp("raw"), "raw", data=data)
    return path, data, mip1, make_synapses(centres)


@pytest.fixture(scope="module")
def jpeg_volume(tmp_path_factory):
    path, data, _ = make_volume(
        tmp_path_factory.mktemp("jpeg"), "jpeg", encoding="jpeg", data=volume_data(smooth=True),
        with_mip1=False,
    )
    return path, make_synapses(random_centres(12, seed=2))


def cut_all(plan, em_path, root: Path, mip=0, size_2d=SIZE_2D, size_3d=SIZE_3D, n_shards=None):
    """Cut every shard of ``plan`` under ``root/shards/NNN``; return the shard dirs."""
    n_shards = int(plan["shard"].max()) + 1 if n_shards is None else n_shards
    dirs = [root / "shards" / f"{shard:03d}" for shard in range(n_shards)]
    for shard, shard_dir in enumerate(dirs):
        cut_shard(plan, shard, em_path, mip, TABLE_RESOLUTION, size_2d, size_3d, shard_dir)
    return dirs


def stored(root: Path, row, kind: str) -> np.ndarray:
    """The cutout of a manifest row, read from its stack by tifffile, as any TIFF reader would."""
    return tifffile.imread(root / getattr(row, f"path_{kind}"))[getattr(row, "stack_index")]


def _needed_chunks(centres: np.ndarray, chunk=(64, 64, 16)) -> set:
    """Grid indices of the chunks the synapses' SIZE_2D patches (their centre's section) and
    SIZE_3D cubes touch: what a reader must read, not every chunk of the box around both."""
    local = centres - np.array(OFFSET)
    patch = np.array([SIZE_2D[0], SIZE_2D[1], 1])
    patch_start = local - np.array([SIZE_2D[0] // 2, SIZE_2D[1] // 2, 0])
    cube_start = local - np.array(SIZE_3D) // 2
    needed = set()
    for start, size in ((patch_start, patch), (cube_start, np.array(SIZE_3D))):
        first, last = start // np.array(chunk), (start + size - 1) // np.array(chunk)
        needed |= {
            (x, y, z)
            for a, b in zip(first, last)
            for x in range(a[0], b[0] + 1)
            for y in range(a[1], b[1] + 1)
            for z in range(a[2], b[2] + 1)
        }
    return needed


# ------------------------------------------------------------------------------ holes

#: Local z sections of the holey volume left blank (zeros): all inside the second chunk layer.
SLAB = (20, 26)
#: Grid indices of the chunks deleted from the holey volume.
HOLES = [(1, 1, 0), (2, 2, 1), (0, 3, 0)]
CTR_COLUMNS = ["ctr_pt_position_x", "ctr_pt_position_y", "ctr_pt_position_z"]


def _chunk_file(x: int, y: int, z: int) -> str:
    start = np.array(OFFSET) + np.array([x * 64, y * 64, z * 16])
    return f"{start[0]}-{start[0] + 64}_{start[1]}-{start[1] + 64}_{start[2]}-{start[2] + 16}"


@pytest.fixture(scope="module")
def holey_volume(tmp_path_factory):
    """An uncompressed raw volume (every reader reads it) with deleted chunks and a blank slab,
    synapses in, beside and outside the damage, and the status each synapse must get."""
    data = volume_data(seed=11)
    data[:, :, SLAB[0] : SLAB[1]] = 0
    root = tmp_path_factory.mktemp("holey")
    path, data, _ = make_volume(root, "holey", data=data, compress=False, with_mip1=False)
    for hole in HOLES:
        (root / "holey" / "8_8_40" / _chunk_file(*hole)).unlink()
    synapses = make_synapses(random_centres(60, seed=12))
    synapses.loc[[0, 1], "ctr_pt_position_x"] = 2 * (OFFSET[0] + 1)  # boxes leave the volume
    expected = {}
    for row in synapses.itertuples():
        centre = np.array([row.ctr_pt_position_x // 2, row.ctr_pt_position_y // 2,
                           row.ctr_pt_position_z])
        if centre[0] - OFFSET[0] < SIZE_2D[0] // 2:
            expected[row.id] = "out_of_bounds"
        elif _needed_chunks(centre[None]) & set(HOLES):
            expected[row.id] = "missing_chunk"
        elif SLAB[0] <= centre[2] - OFFSET[2] < SLAB[1]:  # the patch's section is blank
            expected[row.id] = "blank"
        else:
            expected[row.id] = "ok"
    assert {"ok", "out_of_bounds", "missing_chunk", "blank"} == set(expected.values())
    return path, data, synapses, expected
