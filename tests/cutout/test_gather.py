"""Gathering the shards: counts, empty splits or classes, too many skipped synapses."""

from __future__ import annotations

import pandas as pd
import pytest

from cutout_helpers import cut_all, SIZE_2D, SIZE_3D
from synapse_ei.cutout.gather import gather, skipped_summary
from synapse_ei.cutout.plan import plan_shards
from synapse_ei.cutout.shard import cut_shard
from synapse_ei.errors import DataError
from synapse_ei.learn.dataset import CutoutDataset
from volume_helpers import OFFSET, TABLE_RESOLUTION


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
