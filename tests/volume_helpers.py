"""Small local precomputed volumes and synapse tables for the volume/cutout tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from cloudvolume import CloudVolume

OFFSET = (100, 200, 10)
SIZE = (256, 256, 32)
CHUNK = (64, 64, 16)
RESOLUTION = (8, 8, 40)
TABLE_RESOLUTION = (4, 4, 40)


def volume_data(size=SIZE, seed: int = 0, smooth: bool = False) -> np.ndarray:
    """uint8 XYZ data with no zeros: random noise, or a smooth texture that survives jpeg."""
    rng = np.random.default_rng(seed)
    if not smooth:
        return rng.integers(1, 250, size=size, dtype=np.uint8)
    x, y, z = np.meshgrid(*(np.arange(n) for n in size), indexing="ij")
    texture = 128 + 60 * np.sin(x / 7.0) * np.cos(y / 5.0) + 30 * np.sin(z / 3.0 + x / 11.0)
    return np.clip(texture + rng.normal(0, 3, size=size), 1, 254).astype(np.uint8)


def make_volume(
    root: Path,
    name: str,
    encoding: str = "raw",
    data: np.ndarray | None = None,
    offset=OFFSET,
    resolution=RESOLUTION,
    chunk=CHUNK,
    with_mip1: bool = True,
    compress: bool | str | None = None,
) -> tuple[str, np.ndarray, np.ndarray | None]:
    """Write ``data`` (XYZ uint8) as a precomputed volume under ``root/name``.

    Returns the ``file://`` path, the mip 0 data and the mip 1 data (every second voxel in x and
    y, written as the volume's 2x2x1 downsampled scale) or None. ``compress`` is passed to
    CloudVolume (None: its default, gzip for raw chunks, stored locally as ``<key>.gz``).
    """
    data = volume_data() if data is None else data
    path = f"file://{Path(root) / name}"
    info = CloudVolume.create_new_info(
        num_channels=1, layer_type="image", data_type="uint8", encoding=encoding,
        resolution=list(resolution), voxel_offset=list(offset), volume_size=list(data.shape),
        chunk_size=list(chunk),
    )
    vol = CloudVolume(path, info=info, mip=0, progress=False, compress=compress)
    if with_mip1:
        vol.add_scale([2, 2, 1], chunk_size=list(chunk), encoding=encoding)
    vol.commit_info()
    vol[vol.bounds.to_slices()] = data[..., None]
    mip1 = None
    if with_mip1:
        mip1 = np.ascontiguousarray(data[::2, ::2, :])
        vol1 = CloudVolume(path, mip=1, progress=False, compress=compress)
        assert tuple(vol1.volume_size) == mip1.shape
        vol1[vol1.bounds.to_slices()] = mip1[..., None]
    return path, data, mip1


def make_synapses(
    centres_mip0: np.ndarray, seed: int = 0, splits=None, labels=None
) -> pd.DataFrame:
    """A synapse table whose ctr positions (4x4x40 table voxels) land on ``centres_mip0``.

    ``centres_mip0`` are XYZ voxels of the 8x8x40 volume; x and y are doubled, plus 1 on odd ids
    so the floor in the conversion is exercised.
    """
    centres = np.asarray(centres_mip0, dtype=np.int64)
    n = len(centres)
    ids = np.arange(1000, 1000 + n, dtype=np.int64)
    odd = (ids % 2).astype(np.int64)
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "id": ids,
            "pre_pt_root_id": (864691135000000000 + rng.integers(0, 10**6, n)).astype(np.int64),
            "post_pt_root_id": (864691136000000000 + rng.integers(0, 10**6, n)).astype(np.int64),
            "ctr_pt_position_x": centres[:, 0] * 2 + odd,
            "ctr_pt_position_y": centres[:, 1] * 2 + odd,
            "ctr_pt_position_z": centres[:, 2],
            "label": labels if labels is not None else
            np.array(["excitatory", "inhibitory"])[np.arange(n) % 2],
            "split": splits if splits is not None else
            np.array(["train", "val", "test"])[(np.arange(n) // 2) % 3],
        }
    )
    return frame


def random_centres(n: int, margin=(12, 12, 4), seed: int = 0, offset=OFFSET, size=SIZE):
    """``n`` distinct mip 0 voxel centres at least ``margin`` voxels inside the volume."""
    rng = np.random.default_rng(seed)
    lo = np.asarray(offset) + np.asarray(margin)
    hi = np.asarray(offset) + np.asarray(size) - np.asarray(margin)
    return rng.integers(lo, hi, size=(n, 3)).astype(np.int64)
