"""Cutting one shard: read its synapses' boxes, write its TIFF stacks, manifest and stats."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

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
    DEFAULT_READ_THREADS,
    iter_boxes,
    iter_tensorstore_boxes,
    _pick_reader,
    _read_box,
    READERS,
    SkippedSynapse,
    _tensorstore_holes,
)
from synapse_ei.cutout.stacks import _shrink_stack, STACK_NAMES, _start_stack
from synapse_ei.cutout.volume import (
    ChunkReader,
    open_tensorstore,
    open_volume,
    table_to_volume_voxels,
    volume_info,
)
from synapse_ei.errors import DataError
from synapse_ei.outputs import atomic_path, write_json, write_parquet
from synapse_ei.tables import CTR, require_columns

log = logging.getLogger(__name__)


#: Synapses handed to the writer thread and not yet written. Enough for the reader to decode
#: the next chunks while the writer cuts (4 left the reader waiting: 1.3x slower, measured
#: with bench/cutout.py); few enough to bound the memory in flight, since each holds the decoded
#: chunks its crops need (at most ~27 chunks of 256 kB for a MICrONS-sized union box).
_WRITES_IN_FLIGHT = 32


def _blank(array: np.ndarray, kind: str) -> str | None:
    """What a manifest row says of a constant cutout (the volume holds no image there: such a
    cutout is skipped, never trained on), or None."""
    if array.min() == array.max():
        return f"{kind} constant (every voxel = {int(array.flat[0])})"
    return None


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
    both starting at ``c - size // 2``; the union box is read once and sliced. With ``reader``
    "chunks" the shard's boxes are read in Morton order through :func:`iter_boxes` (each chunk
    decoded once, ``threads`` reads in flight, by default 1 for a local volume and
    :data:`DEFAULT_READ_THREADS` for a remote one, at most ``lru_bytes`` of decoded chunks);
    "tensorstore" reads the patch and cube of :data:`TENSORSTORE_AHEAD` synapses at a time
    through tensorstore (``threads`` decoding threads, by default the CPUs this job may use;
    a chunk cache of ``lru_bytes``), after checking which chunks the shard needs have a file
    it can read; "auto" (the default) is "tensorstore" where every needed chunk has such a
    file on an unsharded volume, else "chunks" (``stats["reader"]`` says which); "per_synapse"
    reads each box with its own cloud-volume call. All write the same bytes. Reading overlaps
    cutting and writing, which one writer thread does.

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
    root = out_dir.parent.parent
    require_columns(plan, ["id", *CTR, "shard"], "cutout plan")
    if reader not in READERS:
        raise DataError(f"cutout reader: expected one of {list(READERS)}, got {reader!r}.")
    patch_size = check_size(size_2d, 2, "size_2d")
    cube_size = check_size(size_3d, 3, "size_3d")
    rows = plan[plan["shard"] == shard].reset_index(drop=True)
    manifest = empty_manifest(rows)
    stats: dict[str, Any] = {
        "shard": int(shard),
        "em_path": str(em_path),
        "mip": int(mip),
        "position_resolution": [float(value) for value in position_resolution],
        "size_2d": patch_size.tolist(),
        "size_3d": cube_size.tolist(),
        "planned": len(rows),
        "written": 0,
        "skipped": {},
        "reader": reader,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    if len(rows) == 0:
        return _finish(out_dir, manifest, stats, started)

    vol = open_volume(em_path, mip)
    info = volume_info(vol)
    stats["volume_resolution"] = list(info.resolution)
    stats["volume_bounds"] = [info.bounds_start.tolist(), info.bounds_stop.tolist()]
    if info.dtype != "uint8" or int(vol.num_channels) != 1:
        raise DataError(
            f"EM volume {em_path!r}: expected single-channel uint8 image data, found "
            f"{vol.num_channels} channel(s) of {info.dtype}. Point the source at the EM image "
            "layer."
        )
    check_cutout_fits(patch_size, cube_size, info)

    centres = table_to_volume_voxels(rows[CTR].to_numpy(), position_resolution, info.resolution)
    boxes = cutout_boxes(centres, patch_size, cube_size)
    patch_start, patch_stop = boxes["patch"]
    cube_start, cube_stop = boxes["cube"]
    union_start, union_stop = boxes["union"]
    inside = np.all(union_start >= info.bounds_start, axis=1) & np.all(
        union_stop <= info.bounds_stop, axis=1
    )
    if not inside.any():
        raise DataError(outside_message(rows, centres, position_resolution, info,
                                         cutout_extent(patch_size, cube_size)))

    status = np.full(len(rows), OUT_OF_BOUNDS, dtype=object)
    detail = np.full(len(rows), None, dtype=object)
    detail[~inside] = "box leaves the volume bounds"
    stack_index = np.full(len(rows), -1, dtype=np.int64)
    ids = rows["id"].to_numpy()
    # Morton order: consecutive boxes share chunks, so each chunk is needed for a short while.
    todo = np.flatnonzero(inside)
    todo = todo[np.lexsort((ids[todo], morton_codes(union_start[todo])))]
    holes: dict[int, str] = {}  # auto takes tensorstore only where no chunk is missing
    if reader == "auto":
        reader = _pick_reader(ChunkReader(vol, info), union_start[todo], union_stop[todo])
        stats["reader"] = f"auto: {reader}"
    elif reader == "tensorstore":
        holes = _tensorstore_holes(ChunkReader(vol, info), union_start[todo], union_stop[todo],
                                   ids[todo])
    if reader == "tensorstore":
        chunk_reader = ChunkReader(vol, info)
        view = open_tensorstore(info, lru_bytes,
                                threads if threads is not None else len(os.sched_getaffinity(0)))
        boxes_of = [[(patch_start[i], patch_stop[i]), (cube_start[i], cube_stop[i])]
                    for i in todo]
        reads = ((todo[k], crop)
                 for k, crop in iter_tensorstore_boxes(view, boxes_of, ids[todo], info.path,
                                                       holes=holes, chunk_reader=chunk_reader))
    elif reader == "chunks":
        chunk_reader = ChunkReader(vol, info)
        if threads is None:
            threads = 1 if info.path.startswith("file://") else DEFAULT_READ_THREADS
        reads = (
            (todo[k], box)
            for k, box in iter_boxes(
                chunk_reader, union_start[todo], union_stop[todo], ids[todo],
                cache_bytes=lru_bytes, threads=threads,
            )
        )
    else:
        reads = ((i, _read_box(vol, info, union_start[i], union_stop[i], ids[i])) for i in todo)
    progress = tqdm(
        reads, total=len(todo), desc=f"cutout shard {shard}", unit="synapse",
        disable=not sys.stderr.isatty(),
    )
    stack_2d, stack_3d = (out_dir / STACK_NAMES[kind] for kind in ("2d", "3d"))
    item_shapes = {"2d": (patch_size[1], patch_size[0]), "3d": tuple(cube_size[::-1])}
    written = 0
    # Reading overlaps cutting and writing: this thread reads (decodes chunks), one writer
    # thread crops each synapse out of its chunks, checks it and appends it to the stacks (one
    # thread, so the stack rows keep the read order). A crop holds its own chunks, so the
    # reader may drop them from its cache meanwhile; the queue in flight is bounded. The stacks
    # appear only once complete.
    with atomic_path(stack_2d) as tmp_2d, atomic_path(stack_3d) as tmp_3d:
        with (
            # "r+b", not "wb": ext4 flushes a file truncated on open when it is closed.
            open(tmp_2d, "r+b") as file_2d,
            open(tmp_3d, "r+b") as file_3d,
            ThreadPoolExecutor(max_workers=1) as writer,
        ):
            offsets = {
                "2d": _start_stack(file_2d, "2d", (len(todo), *item_shapes["2d"])),
                "3d": _start_stack(file_3d, "3d", (len(todo), *item_shapes["3d"])),
            }
            pending: deque = deque()

            def cut_and_write(i: int, crop: Crop) -> tuple[str, str | None]:
                """Append synapse ``i``'s cutouts to the stacks; its status and why."""
                try:
                    patch = crop(patch_start[i], patch_stop[i])[0]
                    cube = crop(cube_start[i], cube_stop[i])
                except SkippedSynapse as skip:
                    return skip.reason, skip.detail
                blank = _blank(patch, "2D patch") or _blank(cube, "3D cube")
                if blank:
                    return BLANK, blank
                file_2d.write(patch.data)  # C-contiguous (Y, X) and (Z, Y, X): the page layout
                file_3d.write(cube.data)
                return OK, None

            def settle(i: int, future: Any) -> None:
                nonlocal written
                status[i], detail[i] = future.result()
                if status[i] == OK:  # futures settle in the writer's order: the stacks' rows
                    stack_index[i] = written
                    written += 1

            for i, crop in progress:
                pending.append((i, writer.submit(cut_and_write, i, crop)))
                while len(pending) > _WRITES_IN_FLIGHT:
                    settle(*pending.popleft())
            while pending:
                settle(*pending.popleft())
        _require_few_damaged(rows, status, detail, shard, max_skipped_fraction)
        if 0 < written < len(todo):
            _shrink_stack(tmp_2d, "2d", offsets["2d"], (written, *item_shapes["2d"]))
            _shrink_stack(tmp_3d, "3d", offsets["3d"], (written, *item_shapes["3d"]))
    if written == 0:  # every synapse skipped: no stack, as for an empty shard
        stack_2d.unlink()
        stack_3d.unlink()

    ok = status == OK
    manifest["status"] = status
    manifest["skip_detail"] = detail
    for kind, stack in (("2d", stack_2d), ("3d", stack_3d)):
        manifest[f"path_{kind}"] = np.where(ok, stack.relative_to(root).as_posix(), None)
    manifest["stack_index"] = pd.Series(stack_index, dtype="Int64").where(ok)
    stats["written"] = int(ok.sum())
    skipped = pd.Series(status[~ok]).value_counts()
    stats["skipped"] = {str(reason): int(count) for reason, count in skipped.items()}
    if reader == "chunks":
        stats["chunks_decoded"] = chunk_reader.decodes
    if stats["skipped"]:
        log.warning("shard %s: skipped %s of %d synapses", shard, stats["skipped"], len(rows))
    return _finish(out_dir, manifest, stats, started)


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
