"""Cutting one shard: the stored voxels, every reader, holes, blank regions and corrupt chunks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from cutout_helpers import (
    _chunk_file,
    CTR_COLUMNS,
    cut_all,
    HOLES,
    MARKER,
    SIZE_2D,
    SIZE_3D,
    stored,
    _needed_chunks,
)
from synapse_ei.cutout.gather import gather
from synapse_ei.cutout.manifest import MANIFEST_COLUMNS
from synapse_ei.cutout.plan import plan_shards
from synapse_ei.cutout.shard import cut_shard
from synapse_ei.cutout.stacks import open_stack, write_stack
from synapse_ei.cutout.volume import ChunkReader, open_tensorstore, open_volume, volume_info
from synapse_ei.errors import DataError
from volume_helpers import (
    OFFSET,
    SIZE,
    TABLE_RESOLUTION,
    make_synapses,
    make_volume,
    random_centres,
    volume_data,
)

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


def _shard_files(shard_dir: Path, suffixes=(".tif",)) -> dict[str, bytes]:
    """The bytes of a shard's outputs: its stacks, and with ``.parquet`` its manifest (whose
    ``skip_detail`` depends on the reader where synapses are skipped)."""
    return {
        path.relative_to(shard_dir).as_posix(): path.read_bytes()
        for path in sorted(shard_dir.rglob("*"))
        if path.suffix in suffixes
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
    needed = _needed_chunks(centres // np.array([2, 2, 1]))
    assert sorted(decoded) == sorted(needed)  # every needed chunk, each exactly once
    assert stats["chunks_decoded"] == len(needed) < len(synapses)


def test_a_synapse_reads_only_the_chunks_its_patch_and_cube_touch(tmp_path, monkeypatch):
    # At local (68, 100, 16) the patch (12 wide, section 16) crosses x = 64 and the cube (8 wide,
    # 4 deep) crosses z = 16 only, so chunk (0, 1, 0) is in the box around both but in neither:
    # with its file gone the synapse is still cut, by every reader, and nothing reads it.
    path, data, _ = make_volume(tmp_path, "corner", data=volume_data(seed=13), compress=False,
                                with_mip1=False)
    local = np.array([68, 100, 16])
    (tmp_path / "corner" / "8_8_40" / _chunk_file(0, 1, 0)).unlink()
    synapses = make_synapses((np.array(OFFSET) + local)[None])
    assert _needed_chunks(synapses[CTR_COLUMNS].to_numpy() // np.array([2, 2, 1])) == {
        (0, 1, 1), (1, 1, 1), (1, 1, 0)}
    decoded = []
    original = ChunkReader.read
    monkeypatch.setattr(ChunkReader, "read", lambda self, key: decoded.append(key)
                        or original(self, key))
    cx, cy, cz = SIZE_3D
    x, y, z = local - np.array(SIZE_3D) // 2
    for reader in ("chunks", "tensorstore", "per_synapse", "auto"):
        decoded.clear()
        out = tmp_path / reader / "shards" / "000"
        stats = cut_shard(plan_shards(synapses, 1), 0, path, 0, TABLE_RESOLUTION, SIZE_2D,
                          SIZE_3D, out, reader=reader)
        assert stats["written"] == 1 and stats["skipped"] == {}, reader
        row = next(pd.read_parquet(out / "manifest.parquet").itertuples())
        np.testing.assert_array_equal(stored(tmp_path / reader, row, "3d"),
                                      data[x : x + cx, y : y + cy, z : z + cz].transpose(2, 1, 0))
        if reader == "chunks":
            assert sorted(decoded) == [(0, 1, 1), (1, 1, 0), (1, 1, 1)]
    assert stats["reader"] == "auto: tensorstore"  # no chunk it needs is missing


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


def test_a_corrupt_chunk_names_the_chunk_file_and_a_synapse(tmp_path):
    path, _, _ = make_volume(tmp_path, "broken", encoding="jpeg", compress=False,
                             data=volume_data(smooth=True), with_mip1=False)
    synapses = make_synapses(random_centres(8, seed=9))
    centres = synapses[CTR_COLUMNS].to_numpy() // np.array([2, 2, 1])
    hole = sorted(_needed_chunks(centres[:1]))[0]
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
        assert hole in _needed_chunks(position), reader
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
        written[reader] = _shard_files(out, (".tif", ".parquet"))
    assert set(written["chunks"]) == {"2d.tif", "3d.tif", "manifest.parquet"}
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
            written[name, reader] = _shard_files(out, (".tif", ".parquet"))
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


def test_a_cutout_is_blank_only_if_every_voxel_is_equal():
    from synapse_ei.cutout.shard import constant_cutout

    cube = np.full((4, 6, 8), 7, dtype=np.uint8)
    assert constant_cutout(cube, "3D cube") == "3D cube constant (every voxel = 7)"
    cube[3, 5, 7] = 8  # its first row is constant, the rest is not
    assert constant_cutout(cube, "3D cube") is None
    assert constant_cutout(cube[0, 0], "2D patch") == "2D patch constant (every voxel = 7)"
    assert constant_cutout(np.arange(12, dtype=np.uint8).reshape(3, 4), "2D patch") is None
