"""Planning the cutouts: whether the positions fit the volume, the boxes around each synapse,
and shards of neighbouring synapses (Morton order) whose reads share chunks."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from synapse_ei.cutout.manifest import DEFAULT_MAX_SKIPPED_FRACTION
from synapse_ei.cutout.geometry import table_to_volume_voxels, VolumeInfo
from synapse_ei.errors import DataError
from synapse_ei.outputs import read_json, write_parquet
from synapse_ei.tables import CTR, require_columns

log = logging.getLogger(__name__)

#: Largest coordinate (per axis) the 63-bit Morton code holds without coarsening.
_MORTON_BITS = 21


# --------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------


def _spread_bits(values: np.ndarray) -> np.ndarray:
    """Insert two zero bits between each of the low 21 bits (the classic 3D Morton step)."""
    v = values.astype(np.uint64) & np.uint64(0x1FFFFF)
    v = (v | (v << np.uint64(32))) & np.uint64(0x1F00000000FFFF)
    v = (v | (v << np.uint64(16))) & np.uint64(0x1F0000FF0000FF)
    v = (v | (v << np.uint64(8))) & np.uint64(0x100F00F00F00F00F)
    v = (v | (v << np.uint64(4))) & np.uint64(0x10C30C30C30C30C3)
    v = (v | (v << np.uint64(2))) & np.uint64(0x1249249249249249)
    return v


def morton_codes(positions: np.ndarray) -> np.ndarray:
    """Z-order (Morton) codes of (N, 3) integer XYZ positions, as uint64.

    Positions are shifted to start at 0 and, if any axis spans more than 2**21 voxels, coarsened
    by the same power of two on every axis so the code still fits in 63 bits.
    """
    positions = np.asarray(positions, dtype=np.int64)
    if len(positions) == 0:
        return np.zeros(0, dtype=np.uint64)
    shifted = positions - positions.min(axis=0)
    span = int(shifted.max())
    excess = max(0, span.bit_length() - _MORTON_BITS)
    shifted = shifted >> excess
    x, y, z = (_spread_bits(shifted[:, axis]) for axis in range(3))
    return x | (y << np.uint64(1)) | (z << np.uint64(2))


def plan_shards(
    synapses: pd.DataFrame, n_shards: int, key: str = "cutout.shards"
) -> pd.DataFrame:
    """Return ``synapses`` (same row order) with an int64 column ``shard`` in ``[0, n_shards)``.

    Rows are ordered by the Morton code of their ``ctr_pt_position_{x,y,z}`` (ties broken by
    ``id``) and cut into ``n_shards`` contiguous, near-equal groups, so each shard covers a
    compact region and reads shared chunks. Deterministic. More shards than rows is refused
    (naming the config ``key``): the extra shards would be jobs that cut nothing.
    """
    if isinstance(n_shards, bool) or not isinstance(n_shards, (int, np.integer)) or n_shards < 1:
        raise DataError(f"{key}: expected a positive integer, got {n_shards!r}.")
    if n_shards > max(len(synapses), 1):
        raise DataError(
            f"{key}: {n_shards} shards for {len(synapses)} synapse(s) would run "
            f"{n_shards - len(synapses)} cutout job(s) with nothing to cut. Set {key} to at "
            f"most {len(synapses)} in the config file and rerun."
        )
    require_columns(synapses, ["id", *CTR], "synapse table for the cutout plan")
    positions = synapses[CTR].to_numpy()
    if len(synapses) and not np.all(np.isfinite(positions.astype(np.float64))):
        row = int(np.nonzero(~np.isfinite(positions.astype(np.float64)).all(axis=1))[0][0])
        raise DataError(
            f"synapse table for the cutout plan: row {row} has a missing ctr_pt_position; "
            "drop rows without positions before cutting."
        )
    duplicated = synapses["id"].duplicated()
    if duplicated.any():
        row = int(np.nonzero(duplicated.to_numpy())[0][0])
        raise DataError(
            f"synapse table for the cutout plan: id {synapses['id'].iloc[row]} appears more than "
            f"once ({int(duplicated.sum())} repeated row(s), first at row {row}); each id names "
            "its cutout files. Drop the duplicate rows."
        )
    codes = morton_codes(np.floor(positions.astype(np.float64)).astype(np.int64))
    order = np.lexsort((synapses["id"].to_numpy(), codes))
    shard = np.empty(len(synapses), dtype=np.int64)
    for index, members in enumerate(np.array_split(order, int(n_shards))):
        shard[members] = index
    planned = synapses.copy()
    planned["shard"] = shard
    return planned


#: Below this share of the volume's xy area inside the positions' bounding box, the planner
#: warns that the positions cover a small corner of the volume.
SMALL_CORNER = 0.25


def check_positions(
    synapses: pd.DataFrame,
    info: VolumeInfo,
    position_resolution: Sequence[float],
    *,
    ask_to_confirm: bool,
    max_skipped_fraction: float = DEFAULT_MAX_SKIPPED_FRACTION,
) -> list[str]:
    """Check, before any cutout job, that the synapse centres fit EM volume ``info`` at their
    stated ``position_resolution``; return warnings.

    Raises :class:`DataError` when more than ``max_skipped_fraction`` of the centres lie
    outside the volume (the gather would refuse the run anyway), naming a resolution twice or
    half as fine in x and y at which they would fit. With ``ask_to_confirm`` (a source whose
    units the user states: ``files``), also raises when the centres would fit the volume at
    twice the resolution in x and y as well: then they lie in the corner of the volume nearest
    its origin, as an 8x8x40 nm export read as 4x4x40 does on a volume that starts at 0, and
    only the user can tell which it is (``dataset.files.confirm_position_resolution``). A
    small corner alone (less than :data:`SMALL_CORNER` of the volume's xy area), which a
    region's export also covers, is a warning.
    """
    positions = synapses[CTR].to_numpy()
    if len(positions) == 0:
        return []
    stated = np.asarray(position_resolution, dtype=np.float64)
    need = 1.0 - max_skipped_fraction
    fits, centres = share_inside(positions, stated, info)
    fits_2x, _ = share_inside(positions, stated * [2, 2, 1], info)
    lo, hi = centres.min(axis=0), centres.max(axis=0) + 1
    where = (
        f"At position_resolution {stated.tolist()} nm the {len(positions)} synapse centres "
        f"span {bbox_text(lo, hi)} of EM volume {info.path!r} at mip {info.mip} "
        f"({info.resolution} nm), which covers {bbox_text(info.bounds_start, info.bounds_stop)}"
    )
    if fits < need:
        fits_half, _ = share_inside(positions, stated * [0.5, 0.5, 1], info)
        raise DataError(_outside_volume_message(
            where, stated, fits, {2.0: fits_2x, 0.5: fits_half}, need, max_skipped_fraction
        ))  # fmt: skip
    span = (hi - lo)[:2] / np.asarray(info.size)[:2]
    coverage = float(np.prod(np.clip(span, 0, 1)))
    if ask_to_confirm and fits_2x >= need:
        raise DataError(_unconfirmed_resolution_message(where, stated, coverage))
    if coverage < SMALL_CORNER:
        return [
            f"{where}: they cover {coverage:.0%} of its xy area. If the table holds a whole "
            "dataset, not a region's synapses, check dataset.files.position_resolution."
        ]
    return []


def share_inside(
    positions: np.ndarray, position_resolution: Sequence[float], info: VolumeInfo
) -> tuple[float, np.ndarray]:
    """The share of table ``positions`` (N, 3) whose voxel of volume ``info`` lies inside it at
    ``position_resolution``, and those voxels."""
    centres = table_to_volume_voxels(positions, position_resolution, info.resolution)
    inside = np.all(centres >= info.bounds_start, axis=1) & np.all(
        centres < info.bounds_stop, axis=1)
    return float(inside.mean()), centres


def _outside_volume_message(
    where: str,
    stated: np.ndarray,
    fits: float,
    fits_at_scale: dict[float, float],
    need: float,
    max_skipped_fraction: float,
) -> str:
    """Too many centres outside the volume, with the x/y scales at which they would fit."""
    hint = "".join(
        f" At {(stated * [scale, scale, 1]).tolist()} nm, {share:.0%} would be inside: if "
        "that is the export's resolution, set dataset.files.position_resolution to it."
        for scale, share in fits_at_scale.items() if share >= need)
    return (
        f"{where}: {1 - fits:.0%} of them lie outside it, more than "
        f"cutout.max_skipped_fraction = {max_skipped_fraction}.{hint} Check the units of "
        "the positions (CAVE tables use 4x4x40 nm voxels; nm are 1x1x1) and that the "
        "tables and the volume are of the same dataset."
    )


def _unconfirmed_resolution_message(where: str, stated: np.ndarray, coverage: float) -> str:
    """The centres fit at the stated resolution and at twice it: only the user can tell."""
    return (
        f"{where}: they fit inside it, but would fit as well at "
        f"{(stated * [2, 2, 1]).tolist()} nm, covering {coverage:.0%} of its xy area now. "
        "Positions at twice the stated resolution (e.g. an 8x8x40 nm export read as "
        "4x4x40) look exactly like this, and every cutout would then come from the wrong "
        "place. Check the export's units (a synapse you know, or a few cutouts in "
        "napari): if they are at a resolution other than the stated one, set "
        "dataset.files.position_resolution to it; if the stated one is right, set "
        "dataset.files.confirm_position_resolution: true and run again."
    )


def run_plan_cutouts(
    synapses_path: str | Path,
    provenance_path: str | Path,
    plan_path: str | Path,
    n_shards: int,
    mip: int,
    confirm_position_resolution: bool = False,
    max_skipped_fraction: float = DEFAULT_MAX_SKIPPED_FRACTION,
) -> list[str]:
    """The plan_cutouts stage: plan the shards of the split synapses (:func:`plan_shards`),
    check their positions against the EM volume the provenance names at ``mip``
    (:func:`check_positions`; a ``files`` source must confirm its stated units unless
    ``confirm_position_resolution``), write the plan; return (and log) the warnings."""
    # Imported here: reading the volume's info needs cloud-volume; planning does not.
    from synapse_ei.cutout.volume import open_volume, volume_info

    synapses = pd.read_parquet(synapses_path)
    plan = plan_shards(synapses, n_shards=n_shards)  # also checks ids and positions
    provenance = read_json(provenance_path)
    warnings = check_positions(
        synapses,
        volume_info(open_volume(provenance["em_path"], mip)),
        provenance["position_resolution"],
        ask_to_confirm=provenance["source"] == "files" and not confirm_position_resolution,
        max_skipped_fraction=max_skipped_fraction,
    )
    for warning in warnings:
        log.warning(warning)
    write_parquet(plan_path, plan)
    return warnings


# --------------------------------------------------------------------------------------------
# Cutting one shard
# --------------------------------------------------------------------------------------------


def check_size(size: Sequence[int], n_axes: int, name: str) -> np.ndarray:
    values = np.asarray(size).reshape(-1)
    if values.shape != (n_axes,) or not np.all(values == np.round(values)) or np.any(values < 1):
        raise DataError(f"cutout.{name}: expected {n_axes} positive integers, got {list(size)}.")
    return values.astype(np.int64)


def cutout_boxes(
    centres: np.ndarray, size_2d: Sequence[int], size_3d: Sequence[int]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``(start, stop)`` (N, 3) XYZ voxel arrays of the ``patch``, ``cube`` and their ``union``.

    Around each centre ``c`` the patch covers ``size_2d`` = (X, Y) voxels of section ``c.z``, the
    cube ``size_3d`` = (X, Y, Z) voxels, both starting at ``c - size // 2``.
    """
    patch_size, cube_size = np.asarray(size_2d), np.asarray(size_3d)
    patch_start = centres - np.array([patch_size[0] // 2, patch_size[1] // 2, 0])
    patch_stop = patch_start + np.array([patch_size[0], patch_size[1], 1])
    cube_start = centres - cube_size // 2
    cube_stop = cube_start + cube_size
    return {
        "patch": (patch_start, patch_stop),
        "cube": (cube_start, cube_stop),
        "union": (np.minimum(patch_start, cube_start), np.maximum(patch_stop, cube_stop)),
    }


def bbox_text(start: np.ndarray, stop: np.ndarray) -> str:
    return f"[{start[0]}:{stop[0]}, {start[1]}:{stop[1]}, {start[2]}:{stop[2]}] (XYZ voxels)"


def cutout_extent(patch_size: np.ndarray, cube_size: np.ndarray) -> np.ndarray:
    """XYZ voxels of the box around a synapse's patch and cube (both must lie in the volume)."""
    return np.maximum(np.array([patch_size[0], patch_size[1], 1]), cube_size)


def check_cutout_fits(
    patch_size: Sequence[int], cube_size: Sequence[int], info: VolumeInfo
) -> None:
    """Refuse cutout sizes larger than the volume on some axis, naming both sizes: no synapse
    could then be cut, whatever its position."""
    extent = cutout_extent(np.asarray(patch_size), np.asarray(cube_size))
    size = np.asarray(info.size)
    too_big = [axis for k, axis in enumerate("xyz") if extent[k] > size[k]]
    if too_big:
        raise DataError(
            f"cutout.size_2d {list(map(int, patch_size))} and cutout.size_3d "
            f"{list(map(int, cube_size))} need a box of {' x '.join(map(str, extent))} voxels "
            f"(XYZ) around each synapse, larger than EM volume {info.path!r} at mip {info.mip} "
            f"({' x '.join(map(str, size))} voxels) along {', '.join(too_big)}: no cutout fits "
            "in the volume. Set cutout.size_2d / cutout.size_3d to at most the volume's size, "
            "or choose a finer cutout.mip."
        )


def outside_message(
    rows: pd.DataFrame,
    centres: np.ndarray,
    position_resolution: Sequence[float],
    info: VolumeInfo,
    extent: np.ndarray,
) -> str:
    table = rows[CTR].to_numpy()
    lo, hi = table.min(axis=0), table.max(axis=0)
    vlo, vhi = centres.min(axis=0), centres.max(axis=0)
    where = (
        f"every one of the {len(rows)} synapse(s) of this shard lies outside EM volume "
        f"{info.path!r} at mip {info.mip}. Their positions span x {lo[0]}..{hi[0]}, "
        f"y {lo[1]}..{hi[1]}, z {lo[2]}..{hi[2]} table voxels at {tuple(position_resolution)} nm, "
        f"i.e. x {vlo[0]}..{vhi[0]}, y {vlo[1]}..{vhi[1]}, z {vlo[2]}..{vhi[2]} volume voxels at "
        f"{info.resolution} nm, but the volume covers "
        f"{bbox_text(info.bounds_start, info.bounds_stop)}."
    )
    centres_inside = np.all(centres >= info.bounds_start, axis=1) & np.all(
        centres < info.bounds_stop, axis=1)
    if centres_inside.any():
        # The positions are in the volume; the boxes around them are not: blame the size.
        return (
            f"{where} {int(centres_inside.sum())} of their centres are inside it, but every "
            f"cutout box of {' x '.join(map(str, extent))} voxels (XYZ) around them leaves "
            f"the volume ({' x '.join(map(str, info.size))} voxels). Use smaller "
            "cutout.size_2d / cutout.size_3d."
        )
    return (
        f"{where} The position units are probably "
        "mixed up: positions in nm, or in 8x8x40 nm voxels, instead of the stated "
        "position_resolution (CAVE tables use 4x4x40 nm voxels). Fix position_resolution or "
        "convert the positions."
    )
