"""Cutouts at real MICrONS synapse positions, through the code path of the real run.

No EM imagery ships with the real tables, so this builds a sparse local precomputed volume laid
out like the MICrONS EM (jpeg, 8x8x40 nm mip 0 plus a 16x16x40 nm mip 1, 128x128x16 chunks, a
voxel offset far from 0) around the minnie65 v1718 synapse positions, with chunks written only
where the chosen synapses are, then cuts them from their 4x4x40 nm table positions.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
from cloudvolume import CloudVolume

from synapse_ei.cutout.manifest import OK
from synapse_ei.cutout.shard import cut_shard
from synapse_ei.cutout.volume import open_volume, table_to_volume_voxels, volume_info
from synapse_ei.errors import DataError
from synapse_ei.sources import files
from synapse_ei.tables import CTR

EM_RESOLUTION = (8, 8, 40)
CHUNK = np.array([128, 128, 16])
SIZE_2D = (64, 64)
SIZE_3D = (48, 48, 12)
N_CUT = 24


def texture(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """A smooth grey texture of global voxel coordinates (survives jpeg), never 0."""
    values = 128 + 50 * np.sin(x / 9.0) * np.cos(y / 6.0) + 25 * np.sin(z / 2.0 + x / 13.0)
    return np.clip(values, 1, 254).astype(np.uint8)


def chunk_aligned(start: np.ndarray, stop: np.ndarray, offset: np.ndarray):
    lo = offset + (start - offset) // CHUNK * CHUNK
    hi = offset + -(-(stop - offset) // CHUNK) * CHUNK
    return lo, hi


@pytest.fixture(scope="module")
def sparse_microns(realdata, tmp_path_factory):
    folder = realdata / "minnie65_v1718"
    synapses = files.load(folder / "synapses.csv", folder / "cell_types.csv", em_path="-").synapses
    centres = table_to_volume_voxels(synapses[CTR].to_numpy(), (4, 4, 40), EM_RESOLUTION)
    # Bounds that hold every synapse of the table with room for a cutout, chunk-aligned.
    margin = np.array([SIZE_2D[0], SIZE_2D[1], SIZE_3D[2]])
    offset = (centres.min(axis=0) - margin) // CHUNK * CHUNK
    size = -(-(centres.max(axis=0) + margin - offset) // CHUNK) * CHUNK
    assert offset.min() > 10_000, "real positions should sit far from the origin"

    path = f"file://{tmp_path_factory.mktemp('microns') / 'em'}"
    info = CloudVolume.create_new_info(
        num_channels=1, layer_type="image", data_type="uint8", encoding="jpeg",
        resolution=list(EM_RESOLUTION), voxel_offset=offset.tolist(), volume_size=size.tolist(),
        chunk_size=CHUNK.tolist(),
    )  # fmt: skip
    vol = CloudVolume(path, info=info, mip=0, progress=False)
    vol.add_scale([2, 2, 1], chunk_size=CHUNK.tolist(), encoding="jpeg")
    vol.commit_info()

    chosen = synapses.sample(N_CUT, random_state=0).sort_values("id").reset_index(drop=True)
    chosen_centres = table_to_volume_voxels(chosen[CTR].to_numpy(), (4, 4, 40), EM_RESOLUTION)
    half = np.array([SIZE_2D[0] // 2, SIZE_2D[1] // 2, SIZE_3D[2] // 2])
    written = 0
    for centre in chosen_centres:
        lo, hi = chunk_aligned(centre - half, centre + half + 1, offset)
        grid = np.meshgrid(*(np.arange(a, b) for a, b in zip(lo, hi)), indexing="ij")
        vol[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = texture(*grid)[..., None]
        written += int(np.prod((hi - lo) // CHUNK))
    total_chunks = int(np.prod(size // CHUNK))
    assert written < total_chunks / 1000, "the volume should be sparse"
    return {"path": path, "synapses": synapses, "chosen": chosen, "offset": offset}


def test_the_volume_is_laid_out_like_the_microns_em(sparse_microns):
    info = volume_info(open_volume(sparse_microns["path"], mip=0))
    assert info.resolution == (8.0, 8.0, 40.0) and info.encoding == "jpeg"
    assert info.voxel_offset == tuple(int(v) for v in sparse_microns["offset"])
    mip1 = volume_info(open_volume(sparse_microns["path"], mip=1))
    assert mip1.resolution == (16.0, 16.0, 40.0)
    assert mip1.voxel_offset[0] == info.voxel_offset[0] // 2


def test_real_positions_cut_out_at_the_right_place(sparse_microns, tmp_path):
    chosen = sparse_microns["chosen"].assign(shard=0)
    out = tmp_path / "cutouts" / "shards" / "000"
    stats = cut_shard(chosen, 0, sparse_microns["path"], 0, (4, 4, 40), SIZE_2D, SIZE_3D, out)
    assert stats["written"] == N_CUT and stats["volume_resolution"] == [8.0, 8.0, 40.0]
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert (manifest["status"] == OK).all()

    vol = CloudVolume(sparse_microns["path"], mip=0, progress=False, fill_missing=False)
    for row in manifest.itertuples(index=False):
        # 4x4x40 table voxels -> 8x8x40 EM voxels: x and y halved (floor), z kept.
        cx, cy, cz = row.ctr_pt_position_x // 2, row.ctr_pt_position_y // 2, row.ctr_pt_position_z
        patch = tifffile.imread(out.parent.parent / row.path_2d)[row.stack_index]
        cube = tifffile.imread(out.parent.parent / row.path_3d)[row.stack_index]
        assert patch.shape == (SIZE_2D[1], SIZE_2D[0]) and patch.dtype == np.uint8
        assert cube.shape == (SIZE_3D[2], SIZE_3D[1], SIZE_3D[0]) and cube.dtype == np.uint8
        x0, y0 = cx - SIZE_2D[0] // 2, cy - SIZE_2D[1] // 2
        stored = np.asarray(vol[x0 : x0 + SIZE_2D[0], y0 : y0 + SIZE_2D[1], cz])[..., 0, 0]
        # The raw decoded values, transposed to TIFF's (Y, X): no contrast stretching.
        np.testing.assert_array_equal(patch, stored.T)
        x, y = np.meshgrid(np.arange(x0, x0 + SIZE_2D[0]), np.arange(y0, y0 + SIZE_2D[1]))
        expected = texture(x, y, np.full_like(x, cz)).astype(float)
        assert np.abs(patch.astype(float) - expected).mean() < 3.0  # jpeg's loss only
        z0 = cz - SIZE_3D[2] // 2
        np.testing.assert_array_equal(cube[SIZE_3D[2] // 2], patch[
            (SIZE_2D[1] - SIZE_3D[1]) // 2 : (SIZE_2D[1] + SIZE_3D[1]) // 2,
            (SIZE_2D[0] - SIZE_3D[0]) // 2 : (SIZE_2D[0] + SIZE_3D[0]) // 2,
        ])  # fmt: skip
        assert z0 >= sparse_microns["offset"][2]


def test_a_shard_where_no_chunk_was_written_fails(sparse_microns, tmp_path):
    synapses, chosen = sparse_microns["synapses"], sparse_microns["chosen"]
    centres = table_to_volume_voxels(synapses[CTR].to_numpy(), (4, 4, 40), EM_RESOLUTION)
    written = table_to_volume_voxels(chosen[CTR].to_numpy(), (4, 4, 40), EM_RESOLUTION)
    # A synapse more than two chunks from every written one: its chunks do not exist.
    distance = np.abs(centres[:, None, :] // CHUNK - written[None, :, :] // CHUNK).max(axis=2)
    far = synapses[distance.min(axis=1) > 2].head(1).assign(shard=0)
    assert len(far) == 1
    # Skipped as missing_chunk: all of this one-synapse shard, more than the 5% allowed.
    with pytest.raises(DataError, match=rf"no image.*synapse id {far['id'].iloc[0]}: "
                                        "missing_chunk"):
        cut_shard(far, 0, sparse_microns["path"], 0, (4, 4, 40), SIZE_2D, SIZE_3D,
                  tmp_path / "cutouts" / "shards" / "000")
