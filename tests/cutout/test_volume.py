"""Opening precomputed volumes and converting table positions to volume voxels."""

from __future__ import annotations

import os

import numpy as np
import pytest
from cloudvolume import exceptions as cv_exceptions
from hypothesis import given, settings
from hypothesis import strategies as st

from synapse_ei.cutout.volume import open_volume, table_to_volume_voxels, volume_info
from synapse_ei.errors import DataError
from volume_helpers import CHUNK, OFFSET, SIZE, make_volume, volume_data


@pytest.fixture(scope="module")
def jpeg_volume(tmp_path_factory):
    root = tmp_path_factory.mktemp("vol")
    return make_volume(root, "jpeg", encoding="jpeg", data=volume_data(smooth=True))


def test_4x4x40_positions_halve_x_y_on_8x8x40_and_keep_z():
    positions = np.array([[200, 401, 17], [0, 1, 0], [7, 6, 5]], dtype=np.int64)
    voxels = table_to_volume_voxels(positions, (4, 4, 40), (8, 8, 40))
    assert voxels.dtype == np.int64
    np.testing.assert_array_equal(voxels, [[100, 200, 17], [0, 0, 0], [3, 3, 5]])


def test_mip1_resolution_comes_from_the_info_and_quarters_x_y(jpeg_volume):
    path, _, _ = jpeg_volume
    info = volume_info(open_volume(path, mip=1))
    assert info.resolution == (16.0, 16.0, 40.0)
    assert info.voxel_offset == (OFFSET[0] // 2, OFFSET[1] // 2, OFFSET[2])
    voxels = table_to_volume_voxels(np.array([[403, 800, 12]]), (4, 4, 40), info.resolution)
    np.testing.assert_array_equal(voxels, [[100, 200, 12]])


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.integers(0, 2_000_000), min_size=3, max_size=3),
    st.sampled_from([(8, 8, 40), (16, 16, 40), (32, 32, 40), (4, 4, 40), (8, 8, 80)]),
)
def test_conversion_is_floor_of_nm_over_volume_resolution(position, volume_resolution):
    voxels = table_to_volume_voxels(np.array([position]), (4, 4, 40), volume_resolution)
    nm = np.array(position) * np.array([4, 4, 40])
    np.testing.assert_array_equal(voxels[0], nm // np.array(volume_resolution))


def test_volume_info_is_read_from_the_info_file(jpeg_volume):
    path, _, _ = jpeg_volume
    info = volume_info(open_volume(path, mip=0))
    assert info.resolution == (8.0, 8.0, 40.0)
    assert info.voxel_offset == OFFSET
    assert info.size == SIZE
    assert info.chunk_size == CHUNK
    assert info.encoding == "jpeg"
    assert info.dtype == "uint8"
    assert info.path == path
    np.testing.assert_array_equal(info.bounds_stop, np.add(OFFSET, SIZE))


def test_bare_local_directory_is_accepted(jpeg_volume):
    path, _, _ = jpeg_volume
    info = volume_info(open_volume(path.removeprefix("file://"), mip=0))
    assert info.size == SIZE


def test_missing_info_names_the_path(tmp_path):
    with pytest.raises(DataError, match="no readable 'info'") as error:
        open_volume(f"file://{tmp_path}/nowhere", mip=0)
    assert "nowhere" in str(error.value)


def test_missing_mip_is_a_data_error(jpeg_volume):
    path, _, _ = jpeg_volume
    with pytest.raises(DataError, match="mip 5"):
        open_volume(path, mip=5)


def test_missing_chunk_inside_bounds_raises_not_zeros(tmp_path):
    path, _, _ = make_volume(tmp_path, "holes", with_mip1=False)
    scale_dir = tmp_path / "holes" / "8_8_40"
    first = sorted(os.listdir(scale_dir))[0]
    (scale_dir / first).unlink()
    vol = open_volume(path, mip=0)
    x0, y0, z0 = OFFSET
    with pytest.raises(cv_exceptions.EmptyVolumeException):
        vol[x0 : x0 + 8, y0 : y0 + 8, z0 : z0 + 2]


def test_bad_positions_shape_and_resolution_are_data_errors():
    with pytest.raises(DataError, match=r"\(N, 3\)"):
        table_to_volume_voxels(np.zeros((4, 2)), (4, 4, 40), (8, 8, 40))
    with pytest.raises(DataError, match="position_resolution"):
        table_to_volume_voxels(np.zeros((4, 3)), (4, 0, 40), (8, 8, 40))
    with pytest.raises(DataError, match="row 1"):
        table_to_volume_voxels(np.array([[1.0, 2, 3], [np.nan, 1, 1]]), (4, 4, 40), (8, 8, 40))
