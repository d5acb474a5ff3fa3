"""The TIFF stacks: a damaged or unmappable stack is named."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from cutout_helpers import cut_all
from synapse_ei.cutout.gather import gather
from synapse_ei.cutout.plan import plan_shards
from synapse_ei.cutout.stacks import open_stack, write_stack
from synapse_ei.errors import DataError
from synapse_ei.learn.dataset import CutoutDataset


def test_a_damaged_stack_is_named(raw_volume, tmp_path):
    path, _, _, synapses = raw_volume
    dirs = cut_all(plan_shards(synapses, 2), path, tmp_path)
    manifest, _ = gather(dirs, tmp_path)
    stack = dirs[1] / "3d.tif"
    intact = stack.read_bytes()

    stack.write_bytes(intact[: len(intact) // 2])  # a copy cut short
    # Deleting the shard would not do: Snakemake finds the gathered manifest up to date.
    with pytest.raises(DataError, match=r"001/3d.tif.*truncated.*Redo that shard and what uses "
                                        rf"it: snakemake --cores all --forcerun {dirs[1]} "):
        gather(dirs, tmp_path)
    dataset = CutoutDataset(manifest, tmp_path, "3d")
    in_shard_1 = manifest["path_3d"].str.contains("001").to_numpy()
    dataset.read(int(np.flatnonzero(~in_shard_1)[0]))  # the intact shard still reads
    with pytest.raises(DataError, match=r"001/3d.tif.*truncated"):
        dataset.read(int(np.flatnonzero(in_shard_1)[0]))

    zeroed = np.asarray(tifffile.imread(dirs[0] / "3d.tif"))
    zeroed[2] = 0
    write_stack(dirs[0] / "3d.tif", "3d", zeroed)
    row = int(np.flatnonzero(~in_shard_1 & (manifest["stack_index"] == 2).to_numpy())[0])
    with pytest.raises(DataError, match=rf"synapse {manifest['id'][row]} in .*000/3d.tif.*row 2"
                                        rf".*all zeros.*--forcerun {tmp_path / 'shards/000'} "):
        CutoutDataset(manifest, tmp_path, "3d").read(row)

    stack.write_bytes(b"II*\x00 not really a TIFF")
    with pytest.raises(DataError, match=r"001/3d.tif.*unreadable"):
        gather(dirs, tmp_path)
    stack.unlink()
    with pytest.raises(DataError, match=r"001/3d.tif.*missing"):
        gather(dirs, tmp_path)
    with pytest.raises(DataError, match=r"cutouts of shape \(4, 6, 8\), expected \(4, 6, 9\)"):
        open_stack(dirs[0] / "3d.tif", "3d", (4, 6, 9))
    n = len(open_stack(dirs[0] / "2d.tif", "2d"))
    with pytest.raises(DataError, match=rf"holds {n} cutouts, but the manifest lists row {n}"):
        open_stack(dirs[0] / "2d.tif", "2d", length=n + 1)
    with pytest.raises(DataError, match=r"2d.tif.*expected uint8 with 4 axes \(QZYX\)"):
        open_stack(dirs[0] / "2d.tif", "3d")


def test_a_stack_that_cannot_be_memory_mapped_is_refused(tmp_path):
    cube = np.random.default_rng(0).integers(1, 250, size=(3, 4, 6, 8), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "zlib.tif", cube, photometric="minisblack", compression="zlib",
                     metadata={"axes": "QZYX"})
    with pytest.raises(DataError, match="zlib.tif.*compressed or not contiguous"):
        open_stack(tmp_path / "zlib.tif", "3d")
    tifffile.imwrite(tmp_path / "wide.tif", cube.astype(np.uint16), photometric="minisblack",
                     metadata={"axes": "QZYX"})
    with pytest.raises(DataError, match="wide.tif.*holds uint16"):
        open_stack(tmp_path / "wide.tif", "3d")
    with pytest.raises(DataError, match="non-empty uint8 array of 4 axes"):
        write_stack(tmp_path / "bad.tif", "3d", cube[0])
