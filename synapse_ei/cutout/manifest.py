"""What a shard's manifest says about each synapse: its status, why it was skipped, and
the command that cuts a damaged shard again."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


OK = "ok"
#: Why a synapse has no cutout (its manifest ``status``): its box leaves the volume's bounds;
#: its box needs a chunk the volume lacks (a hole in the tissue or the upload); its patch or
#: cube is constant (a blank region: no image there).
OUT_OF_BOUNDS = "out_of_bounds"
MISSING_CHUNK = "missing_chunk"
BLANK = "blank"
SKIP_REASONS = (OUT_OF_BOUNDS, MISSING_CHUNK, BLANK)
#: The reasons that say the volume is damaged where a synapse lies: a shard fails when more
#: than ``max_skipped_fraction`` of its synapses have one. Out-of-bounds synapses are judged
#: on the gathered totals instead, since a shard of neighbours at the volume's edge may
#: rightly lose many.
DAMAGED = (MISSING_CHUNK, BLANK)
#: The default of ``cutout.max_skipped_fraction`` (the schema holds the config default).
DEFAULT_MAX_SKIPPED_FRACTION = 0.05
MANIFEST_COLUMNS = ["status", "skip_detail", "path_2d", "path_3d", "stack_index"]


def empty_manifest(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` (a shard's plan) with the manifest columns, no cutout written yet."""
    manifest = rows.copy()
    for column in MANIFEST_COLUMNS:
        manifest[column] = pd.Series([None] * len(rows), index=rows.index, dtype=object)
    manifest["stack_index"] = pd.Series(pd.NA, index=rows.index, dtype="Int64")
    return manifest


# --------------------------------------------------------------------------------------------
# Gathering shards
# --------------------------------------------------------------------------------------------


def rerun_shard(shard_dir: str | Path) -> str:
    """How to redo the cutout shard ``shard_dir`` and everything that uses it.

    Deleting the damaged shard is not enough: Snakemake then finds the gathered manifest up to
    date and never reruns the shard; forcing the shard's job reruns it, the gathering and all
    that reads the cutouts.
    """
    return (f"Redo that shard and what uses it: snakemake --cores all --forcerun {shard_dir} "
            "(with your run's --configfile or --profile).")
