"""Gathering the shards into one manifest, refusing a dataset with an empty split or class or
too many skipped synapses."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from synapse_ei.cutout.manifest import (
    DEFAULT_MAX_SKIPPED_FRACTION,
    MANIFEST_COLUMNS,
    OK,
    OUT_OF_BOUNDS,
    rerun_shard,
)
from synapse_ei.cutout.plan import cutout_extent
from synapse_ei.cutout.stacks import open_stack, STACK_NAMES
from synapse_ei.errors import DataError
from synapse_ei.outputs import read_json, write_json, write_parquet
from synapse_ei.tables import LABELS, SPLITS, require_columns


def read_shards(
    shard_dirs: Sequence[str | Path],
    out_root: str | Path,
    columns: Sequence[str] = ("split", "label"),
) -> pd.DataFrame:
    """Every row of the shards' manifests (each needs ``id``, ``columns`` and the manifest
    columns), in shard order, once every stack they list opens with enough items.

    Stack paths are relative to ``out_root``. Raises :class:`DataError` naming the shard, and
    how to cut it again, if its manifest is missing or unreadable or a listed stack is missing,
    damaged or too short.
    """
    frames = [_read_shard_manifest(Path(shard_dir), columns) for shard_dir in shard_dirs]
    if not frames:
        raise DataError("cutouts: no shard directories to gather. Set cutout.shards >= 1.")
    # Empty shards carry no rows; leaving them out keeps pandas from guessing their dtypes.
    non_empty = [frame for frame in frames if len(frame)]
    everything = pd.concat(non_empty or frames[:1], ignore_index=True)
    ok = everything[everything["status"] == OK]
    for kind in STACK_NAMES:
        for relative, rows in ok.groupby(f"path_{kind}"):
            open_stack(Path(out_root) / relative, kind, length=int(rows["stack_index"].max()) + 1)
    return everything


def skipped_counts(everything: pd.DataFrame) -> dict[str, int]:
    """How many rows of the shards' manifests were skipped, per reason (status)."""
    skipped = everything.loc[everything["status"] != OK, "status"].value_counts()
    return {str(reason): int(count) for reason, count in skipped.items()}


def gather(
    shard_dirs: Sequence[str | Path],
    out_root: str | Path,
    max_skipped_fraction: float = DEFAULT_MAX_SKIPPED_FRACTION,
) -> tuple[pd.DataFrame, dict]:
    """Join the shards' manifests into one manifest of usable cutouts, with counts.

    Returns ``(manifest, stats)``: ``manifest`` holds only ``status == 'ok'`` rows (paths
    relative to ``out_root``), ``stats`` the counts per split x class, skips per reason, overall
    (``skipped``, ``skipped_fraction``) and per split x class (``skipped_by_split``), and
    per-shard timings. Raises :class:`DataError` if a shard's manifest is missing or corrupt, a
    listed stack is missing, damaged or too short (:func:`read_shards`), any split x class
    combination has no cutout, or more than ``max_skipped_fraction`` of all planned synapses
    were skipped.
    """
    everything = read_shards(shard_dirs, out_root)
    ok = everything[everything["status"] == OK].reset_index(drop=True)
    skipped = skipped_counts(everything)
    counts, by_split, empty = _counts_by_split(everything)
    shard_stats = [read_json(path) for path in (Path(d) / "stats.json" for d in shard_dirs)
                   if path.is_file()]  # fmt: skip
    if empty:
        raise DataError(
            "cutouts: no usable cutout for " + "; ".join(empty) + ". Every split needs both "
            "classes: add synapses of that class (more data or another split seed) or fix why "
            "they were skipped (out_of_bounds usually means a position-unit mix-up or too "
            "large a cutout)." + _out_of_bounds_hint(skipped, shard_stats)
        )
    n_skipped = int(len(everything) - len(ok))
    stats = {
        "shards": len(shard_dirs),
        "planned": int(len(everything)),
        "written": int(len(ok)),
        "skipped": skipped,
        "skipped_fraction": round(n_skipped / len(everything), 4) if len(everything) else 0.0,
        "max_skipped_fraction": float(max_skipped_fraction),
        "skipped_by_split": by_split,
        "counts": counts,
        "seconds": round(sum(float(s.get("seconds", 0.0)) for s in shard_stats), 3),
        "per_shard": [
            {key: s.get(key) for key in ("shard", "planned", "written", "skipped", "seconds",
                                         "cutouts_per_second")}
            for s in shard_stats
        ],
    }
    if n_skipped > max_skipped_fraction * len(everything):
        raise DataError(_too_many_skipped(stats, shard_stats))
    return ok, stats


def run_gather_cutouts(
    shard_dirs: Sequence[str | Path],
    manifest_path: str | Path,
    stats_path: str | Path,
    max_skipped_fraction: float = DEFAULT_MAX_SKIPPED_FRACTION,
) -> list[str]:
    """The gather_cutouts stage: :func:`gather` the shards (stack paths relative to the
    manifest's folder), write the manifest and its stats; return :func:`skipped_summary`."""
    manifest, stats = gather(shard_dirs, Path(manifest_path).parent, max_skipped_fraction)
    write_parquet(manifest_path, manifest)
    write_json(stats_path, stats)
    return skipped_summary(stats)


def _counts_by_split(
    everything: pd.DataFrame,
) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, dict]], list[str]]:
    """Cutouts written per split x class, what was planned and skipped there, and a line for
    each split x class without a cutout."""
    counts: dict[str, dict[str, int]] = {}
    by_split: dict[str, dict[str, dict]] = {}
    empty: list[str] = []
    for split in SPLITS:
        counts[split], by_split[split] = {}, {}
        for label in LABELS:
            planned = everything[(everything["split"] == split) & (everything["label"] == label)]
            n_ok = int((planned["status"] == OK).sum())
            counts[split][label] = n_ok
            reasons = planned.loc[planned["status"] != OK, "status"].value_counts().to_dict()
            by_split[split][label] = {
                "planned": len(planned),
                "written": n_ok,
                "skipped": {str(reason): int(n) for reason, n in reasons.items()},
                "fraction": round((len(planned) - n_ok) / len(planned), 4) if len(planned)
                else None,
            }
            if n_ok == 0:
                empty.append(
                    f"split '{split}' / class '{label}': {len(planned)} planned, "
                    f"{len(planned) - n_ok} skipped {reasons or ''}".rstrip()
                )
    return counts, by_split, empty


def _read_shard_manifest(shard_dir: Path, columns: Sequence[str]) -> pd.DataFrame:
    path = shard_dir / "manifest.parquet"
    if not path.is_file():
        raise DataError(
            f"cutout shard {str(shard_dir)!r}: no manifest.parquet. The shard did not finish. "
            f"{rerun_shard(shard_dir)}"
        )
    try:
        frame = pd.read_parquet(path)
    except Exception as error:  # pyarrow raises several types for a damaged file
        raise DataError(
            f"cutout shard {str(shard_dir)!r}: manifest.parquet is unreadable ({error}). "
            f"{rerun_shard(shard_dir)}"
        ) from error
    require_columns(frame, ["id", *columns, *MANIFEST_COLUMNS], str(path))
    return frame


def skipped_summary(stats: dict) -> list[str]:
    """Lines for the console: the synapses a gathered ``stats`` skipped, by reason, and the
    fraction skipped per split and class (none when nothing was skipped)."""
    if not stats["skipped"]:
        return []
    lines = [
        f"cutouts: skipped {stats['planned'] - stats['written']} of {stats['planned']} synapses "
        f"({stats['skipped_fraction']:.1%}; cutout.max_skipped_fraction = "
        f"{stats['max_skipped_fraction']}): {stats['skipped']}"
    ]
    for split, labels in stats["skipped_by_split"].items():
        for label, group in labels.items():
            if group["skipped"]:
                lines.append(
                    f"  {split} / {label}: {group['planned'] - group['written']} of "
                    f"{group['planned']} skipped ({group['fraction']:.1%}) {group['skipped']}"
                )
    return lines


def _out_of_bounds_hint(skipped: dict, shard_stats: list[dict]) -> str:
    """When most skipped synapses are out of bounds, the cutout size against the volume's."""
    if not skipped or skipped.get(OUT_OF_BOUNDS, 0) < max(skipped.values()):
        return ""
    # The commonest cause: a cutout too large for where the synapses are, or wrong units.
    sized = next((s for s in shard_stats if "volume_bounds" in s), None)
    if sized is None:
        return ""
    extent = cutout_extent(np.asarray(sized["size_2d"]), np.asarray(sized["size_3d"]))
    size = np.subtract(sized["volume_bounds"][1], sized["volume_bounds"][0])
    return (
        f" out_of_bounds: the box around each synapse, {' x '.join(map(str, extent))} "
        f"voxels (XYZ; cutout.size_2d {sized['size_2d']}, cutout.size_3d "
        f"{sized['size_3d']}), must lie inside the volume ({' x '.join(map(str, size))} "
        "voxels at cutout.mip): smaller cutouts keep more synapses; if nearly all are "
        "out, check the positions' units (dataset.files.position_resolution)."
    )


def _too_many_skipped(stats: dict, shard_stats: list[dict]) -> str:
    """The message for a run that skipped more than ``cutout.max_skipped_fraction``."""
    why = _out_of_bounds_hint(stats["skipped"], shard_stats)
    return (
        "cutouts: " + " ".join(skipped_summary(stats)) + ", more than "
        f"cutout.max_skipped_fraction = {stats['max_skipped_fraction']}.{why} The shards' "
        "manifest.parquet files name each skipped synapse in their status and skip_detail "
        "columns. To train on what is left, raise cutout.max_skipped_fraction in your config "
        "file and run the same snakemake command again (the cutouts are kept)."
    )
