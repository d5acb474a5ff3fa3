"""Planning shards, cutting 2D patches / 3D cubes, gathering shards, reading cutouts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

from synapse_ei.cutout.gather import gather, skipped_summary
from synapse_ei.cutout.manifest import MANIFEST_COLUMNS
from synapse_ei.cutout.plan import check_positions, plan_shards
from synapse_ei.cutout.shard import cut_shard
from synapse_ei.cutout.stacks import open_stack, write_stack
from synapse_ei.cutout.volume import ChunkReader, open_tensorstore, open_volume, volume_info
from synapse_ei.errors import DataError
from synapse_ei.learn.dataset import CutoutDataset
from volume_helpers import (
    OFFSET,
    SIZE,
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


# ------------------------------------------------------------------------------ cut_shard


def test_cutouts_equal_the_stored_voxels_at_the_synapse(raw_volume, tmp_path):
    path, data, _, synapses = raw_volume
    plan = plan_shards(synapses, 2)
    cut_all(plan, path, tmp_path)
    manifest, _ = gather([tmp_path / "shards" / "000", tmp_path / "shards" / "001"], tmp_path)
    assert len(manifest) == len(synapses)
    sx, sy = SIZE_2D
    cx, cy, cz = SIZE_3D
    for row in manifest.itertuples():
        # Table voxels are 4x4x40, the volume 8x8x40: x and y halve (floor), z stays.
        x = row.ctr_pt_position_x // 2 - OFFSET[0]
        y = row.ctr_pt_position_y // 2 - OFFSET[1]
        z = row.ctr_pt_position_z - OFFSET[2]
        patch = stored(tmp_path, row, "2d")
        cube = stored(tmp_path, row, "3d")
        assert patch.shape == (sy, sx) and patch.dtype == np.uint8
        assert cube.shape == (cz, cy, cx) and cube.dtype == np.uint8
        x0, y0 = x - sx // 2, y - sy // 2
        np.testing.assert_array_equal(patch, data[x0 : x0 + sx, y0 : y0 + sy, z].T)
        x0, y0, z0 = x - cx // 2, y - cy // 2, z - cz // 2
        expected = data[x0 : x0 + cx, y0 : y0 + cy, z0 : z0 + cz]
        np.testing.assert_array_equal(cube, expected.transpose(2, 1, 0))
        # The marker sits at the centre: (row y, column x) in the patch, (z, y, x) in the cube.
        assert patch[sy // 2, sx // 2] == MARKER
        assert cube[cz // 2, cy // 2, cx // 2] == MARKER


def test_mip1_cutouts_use_the_mip1_resolution(raw_volume, tmp_path):
    path, _, mip1, synapses = raw_volume
    plan = plan_shards(synapses, 1)
    (shard_dir,) = cut_all(plan, path, tmp_path, mip=1)
    manifest = pd.read_parquet(shard_dir / "manifest.parquet")
    sx, sy = SIZE_2D
    for row in manifest[manifest["status"] == "ok"].itertuples():
        x = row.ctr_pt_position_x * 4 // 16 - OFFSET[0] // 2
        y = row.ctr_pt_position_y * 4 // 16 - OFFSET[1] // 2
        z = row.ctr_pt_position_z - OFFSET[2]
        patch = stored(tmp_path, row, "2d")
        x0, y0 = x - sx // 2, y - sy // 2
        np.testing.assert_array_equal(patch, mip1[x0 : x0 + sx, y0 : y0 + sy, z].T)
    assert (manifest["status"] == "ok").sum() > 0


def test_jpeg_cutouts_keep_the_decoded_values_unstretched(jpeg_volume, tmp_path):
    path, synapses = jpeg_volume
    plan = plan_shards(synapses, 1)
    (shard_dir,) = cut_all(plan, path, tmp_path)
    manifest = pd.read_parquet(shard_dir / "manifest.parquet")
    vol = open_volume(path, mip=0)
    cx, cy, cz = SIZE_3D
    for row in manifest.itertuples():
        x, y, z = row.ctr_pt_position_x // 2, row.ctr_pt_position_y // 2, row.ctr_pt_position_z
        x0, y0, z0 = x - cx // 2, y - cy // 2, z - cz // 2
        in_volume = np.asarray(vol[x0 : x0 + cx, y0 : y0 + cy, z0 : z0 + cz])[..., 0]
        cube = stored(tmp_path, row, "3d")
        np.testing.assert_array_equal(cube, in_volume.transpose(2, 1, 0))
        # Raw intensities, not stretched to 0..255.
        assert cube.min() > 0 or cube.max() < 255


def _shard_files(shard_dir: Path) -> dict[str, bytes]:
    return {
        path.relative_to(shard_dir).as_posix(): path.read_bytes()
        for path in sorted(shard_dir.rglob("*"))
        if path.suffix == ".tif"
    }


def _union_chunks(centres: np.ndarray, chunk=(64, 64, 16)) -> set:
    """Grid indices of the chunks the union boxes (SIZE_2D patch + SIZE_3D cube) touch."""
    half = np.array([max(SIZE_2D[0], SIZE_3D[0]) // 2, max(SIZE_2D[1], SIZE_3D[1]) // 2,
                     SIZE_3D[2] // 2])
    start = centres - np.array(OFFSET) - half
    stop = start + np.array([max(SIZE_2D[0], SIZE_3D[0]), max(SIZE_2D[1], SIZE_3D[1]),
                             SIZE_3D[2]])
    first, last = start // np.array(chunk), (stop - 1) // np.array(chunk)
    return {
        (x, y, z)
        for a, b in zip(first, last)
        for x in range(a[0], b[0] + 1)
        for y in range(a[1], b[1] + 1)
        for z in range(a[2], b[2] + 1)
    }


@pytest.mark.parametrize("volume", ["raw", "jpeg"])
def test_chunk_reader_writes_the_bytes_of_per_synapse_reads(
    volume, raw_volume, jpeg_volume, tmp_path
):
    path, synapses = (raw_volume[0], raw_volume[3]) if volume == "raw" else jpeg_volume
    plan = plan_shards(synapses, 1)
    by_synapse, by_chunk = tmp_path / "a" / "shards" / "000", tmp_path / "b" / "shards" / "000"
    for shard_dir, reader in ((by_synapse, "per_synapse"), (by_chunk, "chunks")):
        # Three read threads: the path a remote volume takes (a local one reads inline).
        cut_shard(plan, 0, path, 0, TABLE_RESOLUTION, SIZE_2D, SIZE_3D, shard_dir, reader=reader,
                  threads=3)
    expected = _shard_files(by_synapse)
    assert set(expected) == {"2d.tif", "3d.tif"}  # one stack per kind
    assert _shard_files(by_chunk) == expected
    pd.testing.assert_frame_equal(
        pd.read_parquet(by_chunk / "manifest.parquet"),
        pd.read_parquet(by_synapse / "manifest.parquet"),
    )


def test_each_chunk_is_decoded_once_per_shard(raw_volume, tmp_path, monkeypatch):
    path, _, _, synapses = raw_volume
    decoded = []
    original = ChunkReader.read
    monkeypatch.setattr(ChunkReader, "read", lambda self, key: decoded.append(key)
                        or original(self, key))
    stats = cut_shard(plan_shards(synapses, 1), 0, path, 0, TABLE_RESOLUTION, SIZE_2D, SIZE_3D,
                      tmp_path / "shards" / "000", threads=3)
    centres = synapses[["ctr_pt_position_x", "ctr_pt_position_y", "ctr_pt_position_z"]].to_numpy()
    needed = _union_chunks(centres // np.array([2, 2, 1]))
    assert sorted(decoded) == sorted(needed)  # every needed chunk, each exactly once
    assert stats["chunks_decoded"] == len(needed) < len(synapses)


def test_a_small_chunk_cache_rereads_but_writes_the_same_bytes(raw_volume, tmp_path):
    path, _, _, synapses = raw_volume
    plan = plan_shards(synapses, 1)
    roomy, tight = tmp_path / "a" / "shards" / "000", tmp_path / "b" / "shards" / "000"
    roomy_stats = cut_shard(plan, 0, path, 0, TABLE_RESOLUTION, SIZE_2D, SIZE_3D, roomy)
    # Room for one box's chunks only: chunks shared by boxes far apart are read again.
    tight_stats = cut_shard(plan, 0, path, 0, TABLE_RESOLUTION, SIZE_2D, SIZE_3D, tight,
                            lru_bytes=1)
    assert tight_stats["chunks_decoded"] > roomy_stats["chunks_decoded"]
    assert _shard_files(tight) == _shard_files(roomy)


def test_manifest_keeps_input_columns_and_stats_count(raw_volume, tmp_path):
    path, _, _, synapses = raw_volume
    plan = plan_shards(synapses, 1)
    plan["size"] = np.arange(len(plan))
    (shard_dir,) = cut_all(plan, path, tmp_path)
    manifest = pd.read_parquet(shard_dir / "manifest.parquet")
    assert set(plan.columns) | set(MANIFEST_COLUMNS) == set(manifest.columns)
    assert manifest["pre_pt_root_id"].dtype == np.int64
    assert (manifest["path_2d"] == "shards/000/2d.tif").all()
    assert (manifest["path_3d"] == "shards/000/3d.tif").all()
    stats = json.loads((shard_dir / "stats.json").read_text())
    assert stats["planned"] == stats["written"] == len(plan)
    assert stats["skipped"] == {}
    assert stats["cutouts_per_second"] > 0


def test_synapses_near_the_edge_are_skipped_and_counted(raw_volume, tmp_path):
    path, _, _, synapses = raw_volume
    edge = synapses.head(3).copy()
    edge["id"] = [1, 2, 3]
    # x within 2 voxels of the volume start: the 12-wide patch leaves the volume.
    edge["ctr_pt_position_x"] = 2 * (OFFSET[0] + 2)
    # z on the last section: the 4-deep cube leaves the volume.
    edge.loc[edge.index[2], "ctr_pt_position_x"] = synapses["ctr_pt_position_x"].iloc[0]
    edge.loc[edge.index[2], "ctr_pt_position_z"] = OFFSET[2] + SIZE[2] - 1
    plan = plan_shards(pd.concat([synapses, edge], ignore_index=True), 1)
    (shard_dir,) = cut_all(plan, path, tmp_path)
    manifest = pd.read_parquet(shard_dir / "manifest.parquet")
    skipped = manifest[manifest["id"].isin([1, 2, 3])]
    assert (skipped["status"] == "out_of_bounds").all()
    assert skipped["path_2d"].isna().all() and skipped["path_3d"].isna().all()
    assert skipped["stack_index"].isna().all()
    assert len(open_stack(shard_dir / "2d.tif", "2d")) == len(synapses)
    stats = json.loads((shard_dir / "stats.json").read_text())
    assert stats["skipped"] == {"out_of_bounds": 3}
    assert stats["written"] == len(synapses)


def test_positions_in_nm_fail_with_a_unit_hint(raw_volume, tmp_path):
    path, _, _, synapses = raw_volume
    in_nm = synapses.copy()
    for axis, res in zip("xyz", TABLE_RESOLUTION):
        in_nm[f"ctr_pt_position_{axis}"] *= res
    with pytest.raises(DataError, match="position_resolution") as error:
        cut_all(plan_shards(in_nm, 1), path, tmp_path)
    assert "nm" in str(error.value) and "4x4x40" in str(error.value)


def test_empty_shard_writes_an_empty_manifest(raw_volume, tmp_path):
    path, _, _, synapses = raw_volume
    # plan_shards refuses more shards than synapses; a shard number the plan lacks is empty.
    plan = plan_shards(synapses.head(2), 2)
    empty = 2
    shard_dir = tmp_path / "shards" / f"{empty:03d}"
    stats = cut_shard(plan, empty, path, 0, TABLE_RESOLUTION, SIZE_2D, SIZE_3D, shard_dir)
    manifest = pd.read_parquet(shard_dir / "manifest.parquet")
    assert len(manifest) == 0
    assert {"id", "label", "split", "status", *MANIFEST_COLUMNS} <= set(manifest.columns)
    assert not list(shard_dir.glob("*.tif"))
    assert stats["planned"] == 0 and stats["written"] == 0


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
        elif _union_chunks(centre[None]) & set(HOLES):
            expected[row.id] = "missing_chunk"
        elif SLAB[0] <= centre[2] - OFFSET[2] < SLAB[1]:  # the patch's section is blank
            expected[row.id] = "blank"
        else:
            expected[row.id] = "ok"
    assert {"ok", "out_of_bounds", "missing_chunk", "blank"} == set(expected.values())
    return path, data, synapses, expected


def test_holes_and_blank_regions_are_skipped_by_every_reader(holey_volume, tmp_path):
    path, data, synapses, expected = holey_volume
    plan = plan_shards(synapses, 1)
    written = {}
    for reader in ("chunks", "tensorstore", "per_synapse", "auto"):
        out = tmp_path / reader / "shards" / "000"
        stats = cut_shard(plan, 0, path, 0, TABLE_RESOLUTION, SIZE_2D, SIZE_3D, out,
                          reader=reader, threads=2, max_skipped_fraction=1.0)
        manifest = pd.read_parquet(out / "manifest.parquet")
        assert dict(zip(manifest["id"], manifest["status"])) == expected, reader
        counts = pd.Series(list(expected.values())).value_counts().to_dict()
        assert stats["written"] == counts.pop("ok") and stats["skipped"] == counts
        # The manifest says which chunk is missing: one of those deleted (the reference
        # reader, one cloud-volume call per synapse, names the box only).
        missing = manifest[manifest["status"] == "missing_chunk"]
        deleted = {_chunk_file(*hole) for hole in HOLES}
        for detail in missing["skip_detail"]:
            if reader != "per_synapse":
                assert detail.split("chunk 8_8_40/")[1].split(" ")[0] in deleted
        assert manifest.loc[manifest["status"] == "blank", "skip_detail"].str.contains(
            "constant").all()
        # The stacks hold the written synapses only, each its own voxels: no filled-in hole.
        ok = manifest[manifest["status"] == "ok"]
        assert sorted(ok["stack_index"]) == list(range(len(ok)))
        assert manifest.loc[manifest["status"] != "ok", ["path_2d", "path_3d",
                                                         "stack_index"]].isna().all().all()
        assert len(open_stack(out / "3d.tif", "3d", SIZE_3D[::-1], len(ok))) == len(ok)
        assert len(open_stack(out / "2d.tif", "2d", SIZE_2D[::-1], len(ok))) == len(ok)
        cx, cy, cz = SIZE_3D
        for row in ok.itertuples():
            x = row.ctr_pt_position_x // 2 - OFFSET[0] - cx // 2
            y = row.ctr_pt_position_y // 2 - OFFSET[1] - cy // 2
            z = row.ctr_pt_position_z - OFFSET[2] - cz // 2
            np.testing.assert_array_equal(
                stored(tmp_path / reader, row, "3d"),
                data[x : x + cx, y : y + cy, z : z + cz].transpose(2, 1, 0))
        written[reader] = _shard_files(out)
    assert stats["reader"] == "auto: chunks"  # tensorstore would read the holes as zeros
    assert written["tensorstore"] == written["per_synapse"] == written["auto"] == written[
        "chunks"]


def test_a_shard_with_too_many_synapses_in_holes_fails_naming_them(holey_volume, tmp_path):
    path, _, synapses, expected = holey_volume
    out = tmp_path / "shards" / "000"
    for reader in ("chunks", "tensorstore"):
        with pytest.raises(DataError) as error:
            cut_shard(plan_shards(synapses, 1), 0, path, 0, TABLE_RESOLUTION, SIZE_2D, SIZE_3D,
                      out, reader=reader)  # the default: at most 5% in holes or blank
        message = str(error.value)
        assert "cutout shard 000" in message and "cutout.max_skipped_fraction = 0.05" in message
        assert "'missing_chunk'" in message and "'blank'" in message
        damaged = [i for i, status in expected.items() if status in ("missing_chunk", "blank")]
        assert f"synapse id {damaged[0]}" in message or any(
            f"synapse id {i}:" in message for i in damaged)
        assert not (out / "manifest.parquet").exists() and not list(out.glob("*.tif"))
    # Allowed to lose them all: no stacks, as for an empty shard, and the manifest says why.
    blank = synapses[synapses["id"].map(expected) == "blank"]
    stats = cut_shard(plan_shards(blank, 1), 0, path, 0, TABLE_RESOLUTION, SIZE_2D, SIZE_3D,
                      tmp_path / "blank", max_skipped_fraction=1.0)
    assert stats["written"] == 0 and stats["skipped"] == {"blank": len(blank)}
    assert not list((tmp_path / "blank").glob("*.tif"))
    assert pd.read_parquet(tmp_path / "blank" / "manifest.parquet")["path_3d"].isna().all()
    # Out-of-bounds synapses do not count against a shard: neighbours at an edge may all be.
    far = synapses[synapses["id"].map(expected).isin(["ok", "out_of_bounds"])]
    stats = cut_shard(plan_shards(far, 1), 0, path, 0, TABLE_RESOLUTION, SIZE_2D, SIZE_3D,
                      tmp_path / "far")
    assert stats["skipped"] == {"out_of_bounds": 2}


def test_gather_counts_holes_per_split_and_class_and_training_sees_none(holey_volume, tmp_path):
    path, _, synapses, expected = holey_volume
    plan = plan_shards(synapses, 2)
    dirs = [tmp_path / "shards" / f"{shard:03d}" for shard in (0, 1)]
    for shard, shard_dir in enumerate(dirs):
        cut_shard(plan, shard, path, 0, TABLE_RESOLUTION, SIZE_2D, SIZE_3D, shard_dir,
                  max_skipped_fraction=1.0)
    manifest, stats = gather(dirs, tmp_path, max_skipped_fraction=1.0)
    status = synapses["id"].map(expected)
    assert set(manifest["id"]) == set(synapses.loc[status == "ok", "id"])
    assert stats["skipped"] == status[status != "ok"].value_counts().to_dict()
    assert stats["skipped_fraction"] == round(float((status != "ok").mean()), 4)
    for (split, label), group in synapses.assign(status=status).groupby(["split", "label"]):
        entry = stats["skipped_by_split"][split][label]
        assert entry["planned"] == len(group)
        assert entry["written"] == (group["status"] == "ok").sum()
        assert entry["skipped"] == group.loc[group["status"] != "ok", "status"].value_counts(
            ).to_dict()
    lines = skipped_summary(stats)
    assert lines[0].startswith(f"cutouts: skipped {(status != 'ok').sum()} of {len(synapses)}")
    assert any(line.startswith("  train / excitatory:") for line in lines)
    # What training reads holds no blank and no filled-in cutout: the all-zero guard never
    # fires, no cutout is constant, no patch touches the slab (a cube may reach into it).
    for kind in ("2d", "3d"):
        cutouts = CutoutDataset(manifest, tmp_path, kind).read_many(range(len(manifest)))
        flat = cutouts.reshape(len(cutouts), -1)
        assert (flat.min(axis=1) < flat.max(axis=1)).all()
        assert kind == "3d" or (flat > 0).all()
    # Above the fraction (default 5%) the gather stops, naming the reasons and the key.
    with pytest.raises(DataError, match=r"skipped \d+ of 60 synapses.*'missing_chunk'.*"
                                        r"more than cutout.max_skipped_fraction = 0.05"):
        gather(dirs, tmp_path)


def test_a_corrupt_chunk_names_the_chunk_file_and_a_synapse(tmp_path):
    path, _, _ = make_volume(tmp_path, "broken", encoding="jpeg", compress=False,
                             data=volume_data(smooth=True), with_mip1=False)
    synapses = make_synapses(random_centres(8, seed=9))
    centres = synapses[CTR_COLUMNS].to_numpy() // np.array([2, 2, 1])
    hole = sorted(_union_chunks(centres[:1]))[0]
    chunk = tmp_path / "broken" / "8_8_40" / _chunk_file(*hole)
    content = chunk.read_bytes()
    chunk.write_bytes(content[: len(content) // 2])  # a download cut short
    for reader in ("chunks", "tensorstore", "per_synapse"):
        with pytest.raises(DataError) as error:
            cut_shard(plan_shards(synapses, 1), 0, path, 0, TABLE_RESOLUTION, SIZE_2D, SIZE_3D,
                      tmp_path / reader, reader=reader, max_skipped_fraction=1.0)
        message = str(error.value)
        assert "exists but cannot be decoded" in message and "cloudfiles cp" in message
        assert "Premature end of JPEG file" in message  # simplejpeg's words, kept
        if reader != "per_synapse":  # cloud-volume's own read does not say which chunk
            assert f"{chunk.name}'" in message, reader
            assert f"cloudfiles cp SOURCE/8_8_40/{chunk.name} {path}/8_8_40/{chunk.name}`" in (
                message)
        synapse_id = int(message.split("synapse id ")[1].split(" ")[0])
        position = centres[synapses["id"].to_numpy() == synapse_id]
        assert hole in _union_chunks(position), reader
    # cloud-volume's default gzip-compressed raw chunks: a .gz cut short is named too.
    path, _, _ = make_volume(tmp_path, "gzip", with_mip1=False)
    chunk = tmp_path / "gzip" / "8_8_40" / (_chunk_file(*hole) + ".gz")
    content = chunk.read_bytes()
    chunk.write_bytes(content[: len(content) // 2])
    with pytest.raises(DataError, match=rf"{_chunk_file(*hole)}' exists but cannot be decoded"):
        cut_shard(plan_shards(synapses, 1), 0, path, 0, TABLE_RESOLUTION, SIZE_2D, SIZE_3D,
                  tmp_path / "gz", reader="chunks")


def test_a_cutout_larger_than_the_volume_names_both_sizes(raw_volume, tmp_path):
    path, _, _, synapses = raw_volume
    plan = plan_shards(synapses, 1)
    with pytest.raises(DataError, match=r"cutout.size_2d \[12, 10\] and cutout.size_3d "
                                        r"\[8, 6, 64\].*12 x 10 x 64 voxels.*256 x 256 x 32 "
                                        r"voxels\) along z"):
        cut_shard(plan, 0, path, 0, TABLE_RESOLUTION, SIZE_2D, (8, 6, 64), tmp_path / "a")
    # Boxes that leave the volume around centres inside it: the size is to blame, not units.
    with pytest.raises(DataError) as error:
        cut_shard(plan, 0, path, 0, TABLE_RESOLUTION, (250, 10), SIZE_3D, tmp_path / "b")
    message = str(error.value)
    assert "24 of their centres are inside it" in message and "250 x 10 x 4" in message
    assert "smaller cutout.size_2d" in message and "units" not in message


def test_a_cutout_size_that_skips_many_synapses_stops_the_gather(raw_volume, tmp_path):
    path, _, _, synapses = raw_volume
    plan = plan_shards(synapses, 2)
    dirs = cut_all(plan, path, tmp_path, size_2d=(120, 10))
    with pytest.raises(DataError) as error:
        gather(dirs, tmp_path)
    message = str(error.value)
    assert "'out_of_bounds'" in message and "120 x 10 x 4 voxels" in message
    assert "256 x 256 x 32 voxels" in message and "cutout.max_skipped_fraction = 0.05" in message
    # So large that a split loses a class: that message names the size as well.
    with pytest.raises(DataError, match=r"no usable cutout.*200 x 10 x 4 voxels"):
        gather(cut_all(plan, path, tmp_path / "larger", size_2d=(200, 10)), tmp_path / "larger")
    manifest, stats = gather(dirs, tmp_path, max_skipped_fraction=1.0)
    assert stats["skipped"]["out_of_bounds"] == len(synapses) - len(manifest) > 0
    assert sum(group["planned"] - group["written"] for labels in stats[
        "skipped_by_split"].values() for group in labels.values()) == len(synapses) - len(manifest)


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


# ------------------------------------------------------------------------------ gather


def test_gather_counts_split_by_class_and_skips(raw_volume, tmp_path):
    path, _, _, synapses = raw_volume
    edge = synapses.head(1).assign(id=7, ctr_pt_position_x=2 * OFFSET[0])
    plan = plan_shards(pd.concat([synapses, edge], ignore_index=True), 4)
    manifest, stats = gather(cut_all(plan, path, tmp_path, n_shards=5), tmp_path)
    assert (manifest["status"] == "ok").all() and 7 not in set(manifest["id"])
    assert stats["skipped"] == {"out_of_bounds": 1}
    assert stats["written"] == len(synapses) == len(manifest)
    expected = synapses.groupby(["split", "label"]).size()
    for (split, label), count in expected.items():
        assert stats["counts"][split][label] == count


def test_gather_names_the_empty_split_and_class(raw_volume, tmp_path):
    path, _, _, synapses = raw_volume
    no_val_inhibitory = synapses.copy()
    val_inh = (no_val_inhibitory["split"] == "val") & (no_val_inhibitory["label"] == "inhibitory")
    # Move those synapses off the volume: planned, but skipped.
    no_val_inhibitory.loc[val_inh, "ctr_pt_position_x"] = 2 * OFFSET[0]
    plan = plan_shards(no_val_inhibitory, 2)
    dirs = cut_all(plan, path, tmp_path)
    with pytest.raises(DataError) as error:
        gather(dirs, tmp_path)
    message = str(error.value)
    assert f"split 'val' / class 'inhibitory': {int(val_inh.sum())} planned" in message
    assert "out_of_bounds" in message
    assert "'train'" not in message and "'excitatory'" not in message


def test_gather_refuses_missing_or_corrupt_manifest_and_missing_stack(raw_volume, tmp_path):
    path, _, _, synapses = raw_volume
    dirs = cut_all(plan_shards(synapses, 2), path, tmp_path)
    manifest = pd.read_parquet(dirs[0] / "manifest.parquet")
    (tmp_path / manifest["path_3d"].iloc[0]).unlink()
    with pytest.raises(DataError, match=manifest["path_3d"].iloc[0]):
        gather(dirs, tmp_path)
    (dirs[1] / "manifest.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError,
                       match=rf"001.*unreadable.*snakemake --cores all --forcerun {dirs[1]} "):
        gather(dirs, tmp_path)
    (dirs[1] / "manifest.parquet").unlink()
    with pytest.raises(DataError, match=rf"001.*no manifest.parquet.*--forcerun {dirs[1]} "):
        gather(dirs, tmp_path)


# ------------------------------------------------------------------------------ tensorstore


@pytest.mark.parametrize("encoding", ["jpeg", "raw"])
def test_the_tensorstore_reader_writes_the_bytes_of_the_chunk_reader(tmp_path, encoding):
    path, _, _ = make_volume(tmp_path, encoding, encoding=encoding, compress=False,
                             data=volume_data(smooth=encoding == "jpeg"), with_mip1=False)
    plan = plan_shards(make_synapses(random_centres(16, seed=6)), 1)
    written = {}
    for reader in ("chunks", "tensorstore"):
        out = tmp_path / reader / "shards" / "000"
        stats = cut_shard(plan, 0, path, 0, TABLE_RESOLUTION, SIZE_2D, SIZE_3D, out,
                          reader=reader, threads=2)
        assert stats["written"] == 16 and stats["reader"] == reader
        written[reader] = _shard_files(out)
    assert written["tensorstore"] == written["chunks"]


def test_the_auto_reader_takes_tensorstore_only_where_it_reads_every_chunk(tmp_path):
    synapses = make_synapses(random_centres(12, seed=10))
    plain, _, _ = make_volume(tmp_path, "plain", compress=False, with_mip1=False)
    gzip, _, _ = make_volume(tmp_path, "gzip", with_mip1=False)  # cloud-volume's .gz chunks
    written = {}
    for name, path, chosen in (("plain", plain, "tensorstore"), ("gzip", gzip, "chunks")):
        for reader in ("auto", "chunks"):
            out = tmp_path / name / reader / "shards" / "000"
            stats = cut_shard(plan_shards(synapses, 1), 0, path, 0, TABLE_RESOLUTION, SIZE_2D,
                              SIZE_3D, out, reader=reader)
            written[name, reader] = _shard_files(out)
        assert stats["reader"] == "chunks"
        assert json.loads((tmp_path / name / "auto/shards/000/stats.json").read_text())[
            "reader"] == f"auto: {chosen}"
        assert written[name, "auto"] == written[name, "chunks"]


def test_the_tensorstore_reader_refuses_chunks_it_would_read_as_zeros(tmp_path):
    # cloud-volume's default for raw chunks: gzip, stored as <key>.gz files.
    path, data, _ = make_volume(tmp_path, "gzip", with_mip1=False)
    synapses = make_synapses(random_centres(6, seed=7))
    vol = open_volume(path, 0)
    view = open_tensorstore(volume_info(vol), 2**20, 1)
    start = np.array(OFFSET)
    # The hazard itself: tensorstore reads those chunks as zeros, without an error.
    zeros = view[start[2]:start[2] + 4, start[1]:start[1] + 8, start[0]:start[0] + 8].read().result()
    assert not zeros.any() and data[:8, :8, :4].any()
    with pytest.raises(DataError, match=r"synapse id \d+.*gzip-compressed \(.gz\).*as zeros"):
        cut_shard(plan_shards(synapses, 1), 0, path, 0, TABLE_RESOLUTION, SIZE_2D, SIZE_3D,
                  tmp_path / "out", reader="tensorstore")


# ------------------------------------------------------------------------------ stacks


def test_each_stack_row_is_the_cutout_of_its_synapse(raw_volume, tmp_path):
    path, _, _, synapses = raw_volume
    edge = synapses.head(1).assign(id=7, ctr_pt_position_x=2 * OFFSET[0])  # skipped
    plan = plan_shards(pd.concat([synapses, edge], ignore_index=True), 2)
    dirs = cut_all(plan, path, tmp_path)
    for shard_dir in dirs:
        manifest = pd.read_parquet(shard_dir / "manifest.parquet")
        ok = manifest["status"] == "ok"
        assert manifest.loc[~ok, ["path_2d", "path_3d", "stack_index"]].isna().all().all()
        assert sorted(manifest.loc[ok, "stack_index"]) == list(range(int(ok.sum())))
        for kind, shape in (("2d", SIZE_2D[::-1]), ("3d", SIZE_3D[::-1])):
            stack = open_stack(shard_dir / f"{kind}.tif", kind, shape, int(ok.sum()))
            assert isinstance(stack, np.memmap) and stack.shape == (ok.sum(), *shape)
            # The same bytes as the stack written whole, and tifffile reads it as such.
            write_stack(tmp_path / "whole.tif", kind, np.asarray(stack))
            assert (tmp_path / "whole.tif").read_bytes() == (shard_dir / f"{kind}.tif").read_bytes()
            with tifffile.TiffFile(shard_dir / f"{kind}.tif") as tiff:
                assert tiff.series[0].axes == {"2d": "QYX", "3d": "QZYX"}[kind]
                assert len(tiff.pages) == ok.sum() * (1 if kind == "2d" else SIZE_3D[2])
    assert 7 in set(pd.concat(pd.read_parquet(d / "manifest.parquet") for d in dirs)["id"])


def test_the_dataset_reads_each_synapse_from_its_stack(raw_volume, tmp_path):
    path, _, _, synapses = raw_volume
    manifest, _ = gather(cut_all(plan_shards(synapses, 3), path, tmp_path), tmp_path)
    shuffled = list(np.random.default_rng(0).permutation(len(manifest)))
    for kind in ("2d", "3d"):
        dataset = CutoutDataset(manifest, tmp_path, kind)
        assert len(dataset.stacks) == 3
        expected = np.stack([stored(tmp_path, row, kind) for row in manifest.itertuples()])
        np.testing.assert_array_equal(dataset.read_many(shuffled), expected[shuffled])
        batch = dataset.__getitems__(shuffled)
        for index, (x, y) in zip(shuffled, batch):
            assert torch.equal(x[0], torch.from_numpy(expected[index]))
            assert x.dtype == torch.uint8 and int(y) == int(dataset.labels[index])
        preloaded = CutoutDataset(manifest, tmp_path, kind, preload=True)
        np.testing.assert_array_equal(preloaded.read_many(shuffled), expected[shuffled])


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
