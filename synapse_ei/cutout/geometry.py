"""The geometry of a volume at one mip and the one conversion of table positions to its voxels:
plain numbers, so that planning and checking positions need no volume library.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from synapse_ei.errors import DataError


@dataclass(frozen=True)
class VolumeInfo:
    """Geometry and storage of one volume at one mip, as its ``info`` file states them (XYZ)."""

    path: str
    mip: int
    resolution: tuple[float, float, float]
    voxel_offset: tuple[int, int, int]
    size: tuple[int, int, int]
    chunk_size: tuple[int, int, int]
    encoding: str
    dtype: str

    @property
    def bounds_start(self) -> np.ndarray:
        """First voxel inside the volume (inclusive), XYZ int64."""
        return np.asarray(self.voxel_offset, dtype=np.int64)

    @property
    def bounds_stop(self) -> np.ndarray:
        """One past the last voxel inside the volume (exclusive), XYZ int64."""
        return self.bounds_start + np.asarray(self.size, dtype=np.int64)


def table_to_volume_voxels(
    positions: np.ndarray,
    position_resolution: Sequence[float],
    volume_resolution: Sequence[float],
) -> np.ndarray:
    """Convert (N, 3) XYZ table voxels to (N, 3) int64 voxels of a volume at some mip.

    ``volume_voxel = floor(position * position_resolution / volume_resolution)`` per axis, so
    4x4x40 positions on an 8x8x40 volume have x and y halved and z unchanged.
    """
    positions = np.asarray(positions)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise DataError(
            f"positions: expected an (N, 3) XYZ array, got shape {positions.shape}. Pass the "
            "ctr_pt_position_x/y/z columns."
        )
    table_res = np.asarray(position_resolution, dtype=np.float64).reshape(-1)
    volume_res = np.asarray(volume_resolution, dtype=np.float64).reshape(-1)
    for name, res in (("position_resolution", table_res), ("volume resolution", volume_res)):
        if res.shape != (3,) or not np.all(np.isfinite(res)) or np.any(res <= 0):
            raise DataError(f"{name}: expected three positive nm-per-voxel values, got {res}.")
    as_float = positions.astype(np.float64)
    if not np.all(np.isfinite(as_float)):
        row = int(np.nonzero(~np.isfinite(as_float).all(axis=1))[0][0])
        raise DataError(f"positions: row {row} is not finite ({positions[row]}). Drop that row.")
    # Multiply before dividing: nm values are exact in float64, so floor() is exact too.
    return np.floor(as_float * table_res / volume_res).astype(np.int64)
