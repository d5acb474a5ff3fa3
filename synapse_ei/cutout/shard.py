"""Cutting one shard: read its synapses' boxes, write its TIFF stacks, manifest and stats."""

from __future__ import annotations

import logging
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
from tqdm import tqdm

from synapse_ei.cutout.manifest import (
    BLANK,
    DAMAGED,
    DEFAULT_MAX_SKIPPED_FRACTION,
    empty_manifest,
    OK,
    OUT_OF_BOUNDS,
)
from synapse_ei.cutout.plan import (
    check_cutout_fits,
    check_size,
    cutout_boxes,
    cutout_extent,
    morton_codes,
    outside_message,
)
from synapse_ei.cutout.readers import (
    Crop,
    DEFAULT_LRU_BYTES,
    read_shard,
    READERS,
    SkippedSynapse,
)
from synapse_ei.cutout.stacks import shrink_stack, STACK_NAMES, start_stack
from synapse_ei.cutout.volume import (
    open_volume,
    table_to_volume_voxels,
    volume_info,
    VolumeInfo,
)
from synapse_ei.errors import DataError
from synapse_ei.outputs import atomic_path, read_json, write_json, write_parquet
from synapse_ei.tables import CTR, require_columns

log = logging.getLogger(__name__)


#: Synapses handed to the writer thread and not yet written. Enough for the reader to decode
#: the next chunks while the writer cuts (4 left the reader waiting: 1.3x slower, measured
#: with bench/cutout.py); few enough to bound the memory in flight, since each holds the decoded
#: chunks its crops need (at most 17 chunks of 256 kB for a MICrONS-sized patch and cube).
_WRITES_IN_FLIGHT = 32


def constant_cutout(array: np.ndarray, kind: str) -> str | None:
    """What a manifest row says of a constant cutout (the volume holds no image there: such a
    cutout is skipped, never trained on), or None. EM varies within a row, so the first row
    settles almost every cutout without a pass over all of it (a full min and max took ~4% of
    a shard's CPU time, bench/cutout.py; BENCHMARKS.md)."""
    row = array.reshape(-1, array.shape[-1])[0]
    if row.min() != row.max():
        return None
    if array.min() == array.max():
        return f"{kind} constant (every voxel = {int(array.flat[0])})"
    return None


def run_cutout(
    plan_path: str | Path,
    provenance_path: str | Path,
    shard: int,
    out_dir: str | Path,
    **settings: Any,
) -> dict:
    """The cutout stage: :func:`cut_shard` of shard ``shard`` of the plan at ``plan_path``, from
    the EM volume and position resolution the query recorded in ``provenance_path``;
    ``settings`` are :func:`cut_shard`'s (``mip``, ``size_2d``, ``size_3d``, ``reader``, ...)."""
    provenance = read_json(provenance_path)
    return cut_shard(
        pd.read_parquet(plan_path),
        shard=int(shard),
        em_path=provenance["em_path"],
        position_resolution=provenance["position_resolution"],
        out_dir=out_dir,
        **settings,
    )


def cut_shard(
    plan: pd.DataFrame,
    shard: int,
    em_path: str,
    mip: int,
    position_resolution: Sequence[float],
    size_2d: tuple[int, int],
    size_3d: tuple[int, int, int],
    out_dir: str | Path,
    *,
    lru_bytes: int = DEFAULT_LRU_BYTES,
    reader: str = "auto",
    threads: int | None = None,
    max_skipped_fraction: float = DEFAULT_MAX_SKIPPED_FRACTION,
) -> dict:
    """Cut the 2D patch and 3D cube of every synapse in ``plan`` whose ``shard`` is ``shard``.

    Positions (``ctr_pt_position_{x,y,z}`` in table voxels of ``position_resolution`` nm) are
    converted to voxels of ``em_path`` at ``mip``. Around each centre ``c`` the patch covers
    ``size_2d`` = (X, Y) voxels of section ``c.z`` and the cube ``size_3d`` = (X, Y, Z) voxels,
    both starting at ``c - size // 2``. The synapses are read in Morton order by ``reader``
    (``auto``, ``chunks``, ``tensorstore`` or ``per_synapse``, with ``threads`` and at most
    ``lru_bytes`` of decoded chunks: :mod:`synapse_ei.cutout.readers` describes them; all write
    the same bytes, and ``stats["reader"]`` says which ran), while one writer thread cuts,
    checks and writes.

    Writes the TIFF stacks ``out_dir/2d.tif`` ((N, Y, X) uint8) and ``out_dir/3d.tif``
    ((N, Z, Y, X) uint8), ``out_dir/manifest.parquet`` (every planned row + ``status``,
    ``skip_detail``, ``path_2d``, ``path_3d``: the stacks relative to ``out_dir.parent.parent``,
    and ``stack_index``, the row in the stacks) and ``out_dir/stats.json``; returns the stats.
    A synapse gets no cutout, and its ``status`` says why (:data:`SKIP_REASONS`), when its box
    leaves the volume (``out_of_bounds``), needs a chunk the volume lacks (``missing_chunk``)
    or its patch or cube is constant (``blank``); the stacks hold only the written ones. A
    :class:`DataError` names the cause when every synapse is out of bounds (the cutout size
    against the volume's, or the likely unit mix-up), when more than ``max_skipped_fraction``
    of the shard's synapses are ``missing_chunk`` or ``blank`` (naming them), and when a chunk
    that exists cannot be decoded (naming the chunk and a synapse).
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    require_columns(plan, ["id", *CTR, "shard"], "cutout plan")
    if reader not in READERS:
        raise DataError(f"cutout reader: expected one of {list(READERS)}, got {reader!r}.")
    patch_size = check_size(size_2d, 2, "size_2d")
    cube_size = check_size(size_3d, 3, "size_3d")
    rows = plan[plan["shard"] == shard].reset_index(drop=True)
    manifest = empty_manifest(rows)
    stats: dict[str, Any] = {
        "shard": int(shard), "em_path": str(em_path), "mip": int(mip),
        "position_resolution": [float(value) for value in position_resolution],
        "size_2d": patch_size.tolist(), "size_3d": cube_size.tolist(), "planned": len(rows),
        "written": 0, "skipped": {}, "reader": reader,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    if len(rows) == 0:
        return _finish(out_dir, manifest, stats, started)

    vol, info = _open_em(em_path, mip)
    stats["volume_resolution"] = list(info.resolution)
    stats["volume_bounds"] = [info.bounds_start.tolist(), info.bounds_stop.tolist()]
    check_cutout_fits(patch_size, cube_size, info)
    boxes, todo = _boxes_to_read(rows, position_resolution, info, patch_size, cube_size)
    ids = rows["id"].to_numpy()
    ordered = {kind: (start[todo], stop[todo]) for kind, (start, stop) in boxes.items()}
    used, chunk_reader, crops = read_shard(reader, vol, info, ordered, ids[todo],
                                           lru_bytes=lru_bytes, threads=threads)
    if reader == "auto":
        stats["reader"] = f"auto: {used}"
    progress = tqdm(crops, total=len(todo), desc=f"cutout shard {shard}", unit="synapse",
                    disable=not sys.stderr.isatty())

    status = np.full(len(rows), OUT_OF_BOUNDS, dtype=object)
    detail = np.full(len(rows), "box leaves the volume bounds", dtype=object)
    stack_index = np.full(len(rows), -1, dtype=np.int64)

    def settle(outcomes: list[tuple[str, str | None]]) -> None:
        """Record each read synapse's status and row in the stacks (the written ones count in
        reading order), and fail on too many damaged ones (before the stacks appear)."""
        for i, (why, more) in zip(todo, outcomes):
            status[i], detail[i] = why, more
        ok = status[todo] == OK
        stack_index[todo[ok]] = np.arange(int(ok.sum()))
        _require_few_damaged(rows, status, detail, shard, max_skipped_fraction)

    stacks = {kind: out_dir / STACK_NAMES[kind] for kind in ("2d", "3d")}
    _write_stacks(stacks, progress, ordered["patch"], ordered["cube"],
                  {"2d": (patch_size[1], patch_size[0]), "3d": tuple(cube_size[::-1])}, settle)

    _fill_manifest(manifest, status, detail, stack_index, stacks, out_dir.parent.parent)
    ok = status == OK
    stats["written"] = int(ok.sum())
    skipped = pd.Series(status[~ok]).value_counts()
    stats["skipped"] = {str(reason): int(count) for reason, count in skipped.items()}
    if used == "chunks":
        stats["chunks_decoded"] = chunk_reader.decodes
    if stats["skipped"]:
        log.warning("shard %s: skipped %s of %d synapses", shard, stats["skipped"], len(rows))
    return _finish(out_dir, manifest, stats, started)


def _open_em(em_path: str, mip: int) -> tuple[Any, VolumeInfo]:
    """The EM volume at ``mip`` and its geometry; refuses anything but one channel of uint8."""
    vol = open_volume(em_path, mip)
    info = volume_info(vol)
    if info.dtype != "uint8" or int(vol.num_channels) != 1:
        raise DataError(
            f"EM volume {em_path!r}: expected single-channel uint8 image data, found "
            f"{vol.num_channels} channel(s) of {info.dtype}. Point the source at the EM image "
            "layer."
        )
    return vol, info


def _boxes_to_read(
    rows: pd.DataFrame, position_resolution: Sequence[float], info: VolumeInfo,
    patch_size: np.ndarray, cube_size: np.ndarray,
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """The patch, cube and union boxes of every row (volume voxels, :func:`cutout_boxes`), and
    the rows whose union lies inside the volume, in reading order. Refuses a shard with none
    inside, with the likely cause."""
    centres = table_to_volume_voxels(rows[CTR].to_numpy(), position_resolution, info.resolution)
    boxes = cutout_boxes(centres, patch_size, cube_size)
    union_start, union_stop = boxes["union"]
    inside = np.all(union_start >= info.bounds_start, axis=1) & np.all(
        union_stop <= info.bounds_stop, axis=1
    )
    if not inside.any():
        raise DataError(outside_message(rows, centres, position_resolution, info,
                                         cutout_extent(patch_size, cube_size)))
    # Morton order: consecutive boxes share chunks, so each chunk is needed for a short while.
    todo = np.flatnonzero(inside)
    ids = rows["id"].to_numpy()
    return boxes, todo[np.lexsort((ids[todo], morton_codes(union_start[todo])))]


def _cut_and_write(
    crop: Crop, patch: tuple[np.ndarray, np.ndarray], cube: tuple[np.ndarray, np.ndarray],
    files: dict[str, BinaryIO],
) -> tuple[str, str | None]:
    """Append one synapse's patch and cube to the stacks, unless it is skipped or blank; its
    status and why."""
    try:
        patch_array = crop(*patch)[0]
        cube_array = crop(*cube)
    except SkippedSynapse as skip:
        return skip.reason, skip.detail
    blank = constant_cutout(patch_array, "2D patch") or constant_cutout(cube_array, "3D cube")
    if blank:
        return BLANK, blank
    files["2d"].write(patch_array.data)  # C-contiguous (Y, X) and (Z, Y, X): the page layout
    files["3d"].write(cube_array.data)
    return OK, None


def _write_stacks(
    stacks: dict[str, Path],
    crops: Iterator[tuple[int, Crop]],
    patches: tuple[np.ndarray, np.ndarray],
    cubes: tuple[np.ndarray, np.ndarray],
    item_shapes: dict[str, tuple[int, ...]],
    settle: Callable[[list[tuple[str, str | None]]], None],
) -> None:
    """Write the stacks ``{kind: path}`` of the synapses ``crops`` yields (``(k, crop)``, ``k``
    in reading order), cutting box ``k``'s patch ``patches[.][k]`` and cube ``cubes[.][k]``;
    call ``settle`` with each synapse's ``(status, detail)`` in that order before the stacks
    appear (it may raise to keep them from appearing). No synapse written: no stacks.

    Reading (this thread: it decodes chunks) overlaps cutting and writing, which one writer
    thread does, so the stack rows keep the read order. A crop holds its own chunks, so the
    reader may drop them from its cache meanwhile; at most :data:`_WRITES_IN_FLIGHT` are
    queued."""
    count = len(patches[0])
    outcomes: list[tuple[str, str | None]] = []
    with atomic_path(stacks["2d"]) as tmp_2d, atomic_path(stacks["3d"]) as tmp_3d:
        with (
            # "r+b", not "wb": ext4 flushes a file truncated on open when it is closed.
            open(tmp_2d, "r+b") as file_2d,
            open(tmp_3d, "r+b") as file_3d,
            ThreadPoolExecutor(max_workers=1) as writer,
        ):
            files = {"2d": file_2d, "3d": file_3d}
            offsets = {kind: start_stack(files[kind], kind, (count, *item_shapes[kind]))
                       for kind in files}
            pending: deque = deque()
            for k, crop in crops:
                pending.append(writer.submit(_cut_and_write, crop, (patches[0][k], patches[1][k]),
                                             (cubes[0][k], cubes[1][k]), files))
                while len(pending) > _WRITES_IN_FLIGHT:
                    outcomes.append(pending.popleft().result())
            outcomes.extend(future.result() for future in pending)
        settle(outcomes)
        written = sum(status == OK for status, _ in outcomes)
        if 0 < written < count:
            for kind, tmp in (("2d", tmp_2d), ("3d", tmp_3d)):
                shrink_stack(tmp, kind, offsets[kind], (written, *item_shapes[kind]))
    if written == 0:  # every synapse skipped: no stack, as for an empty shard
        for path in stacks.values():
            path.unlink()


def _fill_manifest(
    manifest: pd.DataFrame, status: np.ndarray, detail: np.ndarray, stack_index: np.ndarray,
    stacks: dict[str, Path], root: Path,
) -> None:
    """Set the manifest's ``status``, ``skip_detail``, stack paths (relative to ``root``) and
    ``stack_index`` (-1 for a synapse not written)."""
    ok = status == OK
    manifest["status"] = status
    manifest["skip_detail"] = detail
    for kind, stack in stacks.items():
        manifest[f"path_{kind}"] = np.where(ok, stack.relative_to(root).as_posix(), None)
    manifest["stack_index"] = pd.Series(stack_index, dtype="Int64").where(ok)


def _require_few_damaged(
    rows: pd.DataFrame, status: np.ndarray, detail: np.ndarray, shard: int, max_fraction: float
) -> None:
    """Fail the shard when more than ``max_fraction`` of its synapses lie where the volume is
    damaged (:data:`DAMAGED`), naming the reasons and the synapses."""
    damaged = np.isin(status, DAMAGED)
    if damaged.sum() <= max_fraction * len(rows):
        return
    counts = pd.Series(status[damaged]).value_counts().to_dict()
    listed = "; ".join(f"synapse id {rows['id'].iloc[i]}: {status[i]} ({detail[i]})"
                       for i in np.flatnonzero(damaged)[:10])
    more = f"; and {int(damaged.sum()) - 10} more" if damaged.sum() > 10 else ""
    raise DataError(
        f"cutout shard {shard:03d}: {int(damaged.sum())} of its {len(rows)} synapses "
        f"({damaged.mean():.1%}) lie where the EM volume has no image ({counts}), more than "
        f"cutout.max_skipped_fraction = {max_fraction}: {listed}{more}. missing_chunk means "
        "the volume has no chunk file there (a hole in the tissue, or an incomplete copy: "
        "fetch it again), blank that the cutout is constant. If the volume really has holes "
        "there, raise cutout.max_skipped_fraction in your config file and run the same "
        "snakemake command again: only the failed shards rerun."
    )


def _finish(out_dir: Path, manifest: pd.DataFrame, stats: dict, started: float) -> dict:
    seconds = time.perf_counter() - started
    stats["seconds"] = round(seconds, 3)
    stats["cutouts_per_second"] = round(stats["written"] / seconds, 2) if seconds > 0 else None
    write_parquet(out_dir / "manifest.parquet", manifest)
    write_json(out_dir / "stats.json", stats)
    return stats
