"""Cutting 2D patches and 3D cubes around synapses, one spatially coherent shard at a time.

:func:`check_positions` asks, before any cutout job, whether the positions fit the volume at
their stated resolution; :func:`plan_shards` groups neighbouring synapses so a shard's reads
share chunks; :func:`cut_shard` writes one shard's TIFF stacks, manifest and stats, reading every
chunk the shard needs once (:func:`iter_boxes`: chunks decoded in parallel into a bounded cache,
each evicted after its last use) and skipping, with the reason in the manifest, synapses out of
the volume's bounds, in its holes or in blank regions; :func:`gather` joins the shards and
refuses a dataset with an empty split or class or too many skipped synapses; :func:`open_stack`
is the checked reader the training data loader uses.

A shard stores each kind of cutout in one TIFF stack: ``2d.tif`` holds (N, Y, X), ``3d.tif``
(N, Z, Y, X), raw uint8 EM values exactly as stored (no normalisation), row ``stack_index`` of
the manifest per synapse. (Y, X) and (Z, Y, X) are the TIFF page convention; the transpose from
CloudVolume's XYZ happens here and only here. The stacks are uncompressed and contiguous, so
training memory-maps them and reads a batch with one slice per cutout, and any TIFF reader opens
them (Fiji: a stack of N x Z pages). One file per kind and shard, not one per synapse: each
byte is written once, and a cluster file system is spared millions of small files.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tifffile
from cloudvolume import exceptions as cv_exceptions
from tqdm import tqdm

from synapse_ei.errors import DataError
from synapse_ei.io import atomic_path, read_json, write_json, write_parquet
from synapse_ei.tables import CTR, LABELS, SPLITS, require_columns
from synapse_ei.volume import (
    ChunkReader,
    CorruptChunk,
    VolumeInfo,
    missing_chunks,
    open_tensorstore,
    open_volume,
    table_to_volume_voxels,
    volume_info,
)

log = logging.getLogger(__name__)

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
#: The cutout kinds, and the name of each kind's TIFF stack in a shard directory.
STACK_NAMES = {"2d": "2d.tif", "3d": "3d.tif"}
#: The axes of a stack of each kind (tifffile's shaped metadata): Q counts the synapses.
STACK_AXES = {"2d": "QYX", "3d": "QZYX"}
#: Decoded chunks kept per shard: neighbouring synapses share chunks, so each is decoded once.
DEFAULT_LRU_BYTES = 256 * 2**20
#: Chunk reads in flight for a remote volume: they wait on the network, so more threads than
#: cores pay off. A local volume is decoded in the calling thread: decoding holds the GIL, and
#: threads only add switching (as cloud-volume itself does for file://).
DEFAULT_READ_THREADS = 8
#: How to read the boxes of each synapse: every needed chunk once through cloud-volume's decoder
#: ("chunks"); through tensorstore, which decodes in its own threads ("tensorstore"); the
#: faster of the two that can read the volume ("auto": tensorstore unless the volume is
#: sharded or a needed chunk is missing or gzip-compressed); or one cloud-volume read per
#: synapse with no cache ("per_synapse": the reference the others are tested and benchmarked
#: against).
READERS = ("auto", "chunks", "tensorstore", "per_synapse")
#: Synapses whose tensorstore reads are in flight at once.
TENSORSTORE_AHEAD = 16
#: Synapses handed to the writer thread and not yet written. Enough for the reader to decode
#: the next chunks while the writer cuts (4 left the reader waiting: 1.3x slower, measured
#: with bench/cutout.py); few enough to bound the memory in flight, since each holds the decoded
#: chunks its crops need (at most ~27 chunks of 256 kB for a MICrONS-sized union box).
_WRITES_IN_FLIGHT = 32
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

    def inside_at(scale: float) -> tuple[float, np.ndarray]:
        res = stated * np.array([scale, scale, 1.0])
        centres = table_to_volume_voxels(positions, res, info.resolution)
        inside = np.all(centres >= info.bounds_start, axis=1) & np.all(
            centres < info.bounds_stop, axis=1)
        return float(inside.mean()), centres

    need = 1.0 - max_skipped_fraction
    (fits, centres), (fits_2x, _), (fits_half, _) = inside_at(1.0), inside_at(2.0), inside_at(0.5)
    lo, hi = centres.min(axis=0), centres.max(axis=0) + 1
    where = (
        f"At position_resolution {stated.tolist()} nm the {len(positions)} synapse centres "
        f"span {_bbox_text(lo, hi)} of EM volume {info.path!r} at mip {info.mip} "
        f"({info.resolution} nm), which covers {_bbox_text(info.bounds_start, info.bounds_stop)}"
    )
    if fits < need:
        other = [(scale, share) for scale, share in ((2.0, fits_2x), (0.5, fits_half))
                 if share >= need]
        hint = "".join(
            f" At {(stated * [scale, scale, 1]).tolist()} nm, {share:.0%} would be inside: if "
            "that is the export's resolution, set dataset.files.position_resolution to it."
            for scale, share in other)
        raise DataError(
            f"{where}: {1 - fits:.0%} of them lie outside it, more than "
            f"cutout.max_skipped_fraction = {max_skipped_fraction}.{hint} Check the units of "
            "the positions (CAVE tables use 4x4x40 nm voxels; nm are 1x1x1) and that the "
            "tables and the volume are of the same dataset."
        )
    span = (hi - lo)[:2] / np.asarray(info.size)[:2]
    coverage = float(np.prod(np.clip(span, 0, 1)))
    if ask_to_confirm and fits_2x >= need:
        raise DataError(
            f"{where}: they fit inside it, but would fit as well at "
            f"{(stated * [2, 2, 1]).tolist()} nm, covering {coverage:.0%} of its xy area now. "
            "Positions at twice the stated resolution (e.g. an 8x8x40 nm export read as "
            "4x4x40) look exactly like this, and every cutout would then come from the wrong "
            "place. Check the export's units (a synapse you know, or a few cutouts in "
            "napari): if they are at a resolution other than the stated one, set "
            "dataset.files.position_resolution to it; if the stated one is right, set "
            "dataset.files.confirm_position_resolution: true and run again."
        )
    if coverage < SMALL_CORNER:
        return [
            f"{where}: they cover {coverage:.0%} of its xy area. If the table holds a whole "
            "dataset, not a region's synapses, check dataset.files.position_resolution."
        ]
    return []


# --------------------------------------------------------------------------------------------
# Cutting one shard
# --------------------------------------------------------------------------------------------


def _check_size(size: Sequence[int], n_axes: int, name: str) -> np.ndarray:
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


def _bbox_text(start: np.ndarray, stop: np.ndarray) -> str:
    return f"[{start[0]}:{stop[0]}, {start[1]}:{stop[1]}, {start[2]}:{stop[2]}] (XYZ voxels)"


class SkippedSynapse(Exception):
    """Raised by a crop whose synapse gets no cutout: ``reason`` is its manifest status (one of
    :data:`SKIP_REASONS`), ``detail`` what the manifest's ``skip_detail`` says (which chunk)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _corrupt_chunk_error(
    info: VolumeInfo, chunk: str | None, synapse_id: Any, start: np.ndarray, stop: np.ndarray,
    error: Exception,
) -> DataError:
    """The DataError for a chunk that exists but cannot be decoded, inside the box of synapse
    ``synapse_id``. Such a chunk fails its shard rather than being skipped like a missing one:
    a hole in the tissue is stored as no file (or a blank one), so a file that does not decode
    is far more likely a broken download or copy, which fetching it again repairs."""
    where = f"chunk {chunk!r}" if chunk else "a chunk"
    prefix = info.path.rstrip("/") + "/"
    if chunk and chunk.startswith(prefix):
        fetch = f"`cloudfiles cp SOURCE/{chunk[len(prefix):]} {chunk}`"
    else:
        fetch = "`cloudfiles cp SOURCE/<scale>/<chunk> <this volume>/<scale>/<chunk>`"
    return DataError(
        f"EM volume {info.path!r} mip {info.mip}: {where} exists but cannot be decoded "
        f"({type(error).__name__}: {error}); synapse id {synapse_id} needs it, bbox "
        f"{_bbox_text(start, stop)}. A chunk that exists but does not decode is most likely a "
        "broken download or copy, not a hole in the tissue, so the shard stops instead of "
        f"skipping it. Fetch that file again from where the volume came from, e.g. {fetch} "
        "with SOURCE the volume it was copied from, then run the same snakemake command "
        "again: only the failed shard reruns."
    )


#: ``crop(start, stop)``: the XYZ box ``[start, stop)`` as a C-contiguous (Z, Y, X) array;
#: raises :class:`SkippedSynapse` if the synapse's box cannot be read (a missing chunk).
Crop = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _skip_crop(reason: str, detail: str) -> Crop:
    """A crop of a synapse that gets no cutout: calling it raises :class:`SkippedSynapse`."""

    def crop(start: np.ndarray, stop: np.ndarray) -> np.ndarray:
        raise SkippedSynapse(reason, detail)

    return crop


def _read_box(
    vol: Any, info: VolumeInfo, start: np.ndarray, stop: np.ndarray, synapse_id: Any
) -> Crop:
    """Crops of the XYZ box ``[start, stop)``, read with one cloud-volume call."""
    try:
        cutout = vol[start[0] : stop[0], start[1] : stop[1], start[2] : stop[2]]
    except cv_exceptions.EmptyVolumeException as error:
        return _skip_crop(MISSING_CHUNK, f"chunk(s) missing in {error}")
    except Exception as error:  # cloud-volume re-raises the codec's own error type
        raise _corrupt_chunk_error(info, None, synapse_id, start, stop, error) from error
    return _crop_of(np.asarray(cutout)[..., 0], start)


def _crop_of(box: np.ndarray, origin: np.ndarray) -> Crop:
    """Crops out of ``box``, an (X, Y, Z) array whose first voxel is ``origin``."""

    def crop(start: np.ndarray, stop: np.ndarray) -> np.ndarray:
        lo, hi = start - origin, stop - origin
        return np.ascontiguousarray(box[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].T)

    return crop


def iter_boxes(
    reader: ChunkReader,
    starts: np.ndarray,
    stops: np.ndarray,
    ids: Sequence[Any],
    *,
    cache_bytes: int = DEFAULT_LRU_BYTES,
    threads: int = DEFAULT_READ_THREADS,
) -> Iterator[tuple[int, Crop]]:
    """Yield ``(k, crop)`` for every XYZ box ``[starts[k], stops[k])``, in the given order.

    ``crop(start, stop)`` copies any part of box ``k`` out of the decoded chunks as a
    C-contiguous (Z, Y, X) array (the TIFF page order). It holds the chunks it needs, so it
    stays valid after later items (another thread may call it), at the cost of their memory.

    Each chunk the boxes touch is decoded once and kept only until the last box that needs it,
    so give the boxes in a spatially coherent order (a Morton-ordered shard). Chunks are decoded
    in waves, ``threads`` at a time, into a cache of at most ``cache_bytes`` (raised, if need
    be, to what the largest single box touches); if the cache fills, the chunk needed again
    latest is dropped first (Belady's rule) and read again later, so memory stays bounded.
    A box that needs a missing chunk (a hole in the volume) yields a crop that raises
    :class:`SkippedSynapse` (``missing_chunk``, naming the chunk), and the chunk is not asked
    for again; a chunk that exists but cannot be decoded raises :class:`DataError` naming its
    file and the first synapse (from ``ids``) whose box needs it.
    """
    starts, stops = np.asarray(starts), np.asarray(stops)
    needs = [reader.chunks_of(start, stop) for start, stop in zip(starts, stops)]
    uses: dict[tuple, list[int]] = {}
    for k, keys in enumerate(needs):
        for key in keys:
            uses.setdefault(key, []).append(k)
    next_use = {key: 0 for key in uses}  # index into uses[key] of its next box
    chunk_bytes = int(np.prod(reader.chunk_size)) * np.dtype(reader.info.dtype).itemsize
    capacity = max(int(cache_bytes) // chunk_bytes, max((len(keys) for keys in needs), default=1))
    wave_new = max(1, 4 * int(threads))  # enough reads in flight to keep every thread busy
    # key -> (first voxel of the chunk as plain ints, decoded chunk)
    cache: dict[tuple, tuple[tuple[int, int, int], np.ndarray]] = {}
    missing: set[tuple] = set()  # chunks found missing: a hole, read once
    done = len(needs)

    def upcoming(key: tuple) -> int:
        position = next_use[key]
        return uses[key][position] if position < len(uses[key]) else done

    with ThreadPoolExecutor(max_workers=max(1, int(threads))) as pool:

        def submit(key: tuple) -> Callable[[], np.ndarray]:
            """Start reading ``key``; call the result to wait for the chunk."""
            if threads <= 1:  # read when waited on, in this thread
                return lambda: reader.read(key)
            return pool.submit(reader.read, key).result

        k = 0
        while k < done:
            # A wave: the next boxes, until their new chunks fill a wave or the cache.
            end, wave, new = k, set(), []
            while end < done:
                keys = needs[end]
                fresh = [key for key in keys
                         if key not in cache and key not in wave and key not in missing]
                if end > k and (len(new) + len(fresh) > wave_new
                                or len(wave | set(keys)) > capacity):
                    break
                wave.update(keys)
                new.extend(fresh)
                end += 1
            if len(cache) + len(new) > capacity:
                evictable = sorted((key for key in cache if key not in wave), key=upcoming)
                while len(cache) + len(new) > capacity:
                    del cache[evictable.pop()]
            pending = {key: submit(key) for key in new}  # the whole wave in flight at once
            for key in new:
                try:
                    chunk = pending[key]()
                except cv_exceptions.EmptyVolumeException:
                    missing.add(key)
                    continue
                except CorruptChunk as error:
                    first = next(j for j in range(k, end) if key in needs[j])
                    raise _corrupt_chunk_error(reader.info, error.url, ids[first], starts[first],
                                               stops[first], error.error) from error
                cache[key] = (tuple(map(int, reader.chunk_box(key)[0])), chunk)
            for j in range(k, end):
                holes = [key for key in needs[j] if key in missing]
                if holes:
                    yield j, _skip_crop(MISSING_CHUNK, _missing_detail(reader, holes))
                else:
                    yield j, _chunk_crop(reader.info.dtype, [cache[key] for key in needs[j]])
                for key in needs[j]:
                    next_use[key] += 1
                    if upcoming(key) == done:
                        cache.pop(key, None)
            k = end


def _missing_detail(reader: ChunkReader, keys: Sequence[tuple]) -> str:
    """What a manifest row says of the missing chunks ``keys`` its box needs."""
    more = f" and {len(keys) - 1} more" if len(keys) > 1 else ""
    return f"chunk {reader.chunk_name(keys[0])} missing{more}"


def _chunk_crop(dtype: str, chunks: list[tuple[tuple[int, int, int], np.ndarray]]) -> Crop:
    """Crops assembled straight from decoded ``(origin, chunk)`` pairs (only the voxels asked
    for). Plain ints: a crop visits ~27 chunks, and numpy's per-call cost on 3-vectors would
    outweigh the copying."""

    def crop(start: np.ndarray, stop: np.ndarray) -> np.ndarray:
        (x0, y0, z0), (x1, y1, z1) = map(int, start), map(int, stop)
        out = np.empty((z1 - z0, y1 - y0, x1 - x0), dtype=dtype)
        for (cx, cy, cz), chunk in chunks:
            sx, sy, sz = chunk.shape
            lx, ly, lz = max(cx, x0), max(cy, y0), max(cz, z0)
            hx, hy, hz = min(cx + sx, x1), min(cy + sy, y1), min(cz + sz, z1)
            if lx >= hx or ly >= hy or lz >= hz:
                continue
            # Chunks decode x-fastest (Fortran order), so their transpose copies as (Z, Y, X).
            out[lz - z0 : hz - z0, ly - y0 : hy - y0, lx - x0 : hx - x0] = chunk[
                lx - cx : hx - cx, ly - cy : hy - cy, lz - cz : hz - cz].T
        return out

    return crop


def _tensorstore_misreads(
    reader: ChunkReader, starts: np.ndarray, stops: np.ndarray
) -> tuple[list[list[tuple]], dict[tuple, str]]:
    """The chunks each box needs, and those of them tensorstore would read as zeros without an
    error: ``{chunk: "missing" | "gzip"}`` (cloud-volume's default ``.gz`` raw chunks)."""
    needs = [reader.chunks_of(start, stop) for start, stop in zip(starts, stops)]
    return needs, missing_chunks(reader, sorted({key for keys in needs for key in keys}))


def _pick_reader(reader: ChunkReader, starts: np.ndarray, stops: np.ndarray) -> str:
    """The reader ``auto`` means for these boxes: tensorstore, which decodes in its own threads
    (measured faster, bench/cutout.py), wherever it reads every needed chunk as stored."""
    if reader.sharded:
        return "chunks"
    _, misreads = _tensorstore_misreads(reader, starts, stops)
    if misreads:
        log.info("cutout reader: chunks, since tensorstore would read %d chunk(s) as zeros "
                 "(missing or gzip-compressed)", len(misreads))
        return "chunks"
    return "tensorstore"


def _tensorstore_holes(
    reader: ChunkReader, starts: np.ndarray, stops: np.ndarray, ids: Sequence[Any]
) -> dict[int, str]:
    """The boxes (by position) that need a missing chunk, each with its manifest detail:
    tensorstore would read those chunks as zeros, so their synapses are skipped as
    ``missing_chunk`` without a read. Refuses, naming the first synapse that needs one, boxes
    that need a chunk stored as cloud-volume's gzip-compressed ``.gz`` file, which tensorstore
    would also read as zeros although the data is there."""
    needs, misreads = _tensorstore_misreads(reader, starts, stops)
    gzipped = {key for key, why in misreads.items() if why == "gzip"}
    if gzipped:
        k = next(k for k, keys in enumerate(needs) if gzipped & set(keys))
        key = next(key for key in needs[k] if key in gzipped)
        raise DataError(
            f"EM volume {reader.info.path!r} mip {reader.info.mip}: synapse id {ids[k]}, bbox "
            f"{_bbox_text(starts[k], stops[k])}: chunk {reader.chunk_name(key)!r} is stored "
            "gzip-compressed (.gz), as cloud-volume writes raw chunks by default; tensorstore "
            f"would read it, and {len(gzipped)} chunk(s) like it, as zeros. Use cutout.reader: "
            "chunks, or write the volume with compress=False."
        )
    holes = {}
    for k, keys in enumerate(needs):
        missing = [key for key in keys if key in misreads]
        if missing:
            holes[k] = _missing_detail(reader, missing)
    return holes


def iter_tensorstore_boxes(
    view: Any,
    boxes: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]],
    ids: Sequence[Any],
    volume: str,
    ahead: int = TENSORSTORE_AHEAD,
    *,
    holes: dict[int, str] | None = None,
    chunk_reader: ChunkReader | None = None,
) -> Iterator[tuple[int, Crop]]:
    """Yield ``(k, crop)`` for each ``k``, where ``crop(start, stop)`` is the XYZ box
    ``[start, stop)``, one of ``boxes[k]``, read through the tensorstore ``view`` (indexed
    ``[z, y, x]``) as a (Z, Y, X) array; the reads of ``ahead`` synapses are in flight at once,
    so tensorstore's threads decode while the caller writes. ``volume`` names the volume in
    errors. Boxes ``k`` in ``holes`` (from :func:`_tensorstore_holes`) are not read: their crop
    raises :class:`SkippedSynapse`. A read that fails raises :class:`DataError`; with
    ``chunk_reader`` it names the chunk, found by decoding the box's chunks one by one."""
    holes = holes or {}

    def submit(k: int) -> dict[tuple, Any]:
        reads: dict[tuple, Any] = {}
        if k in holes:
            return reads
        for start, stop in boxes[k]:
            (x0, y0, z0), (x1, y1, z1) = map(int, start), map(int, stop)
            reads[(x0, y0, z0, x1, y1, z1)] = view[z0:z1, y0:y1, x0:x1].read()
        return reads

    def crop_of(k: int, reads: dict[tuple, Any]) -> Crop:
        if k in holes:
            return _skip_crop(MISSING_CHUNK, holes[k])

        def crop(start: np.ndarray, stop: np.ndarray) -> np.ndarray:
            try:
                array = reads[(*map(int, start), *map(int, stop))].result()
            except Exception as error:  # tensorstore raises ValueError and its own errors
                corrupt = _find_corrupt_chunk(chunk_reader, start, stop)
                if corrupt is not None:
                    raise _corrupt_chunk_error(chunk_reader.info, corrupt.url, ids[k], start,
                                               stop, corrupt.error) from error
                raise DataError(
                    f"EM volume {volume!r}: tensorstore cannot read synapse id {ids[k]}, bbox "
                    f"{_bbox_text(start, stop)} ({error}). Re-create that region's chunks, or "
                    "use cutout.reader: chunks."
                ) from error
            return np.ascontiguousarray(array)

        return crop

    pending: deque = deque()
    upcoming = iter(range(len(boxes)))
    for k in upcoming:
        pending.append((k, submit(k)))
        if len(pending) >= ahead:
            break
    while pending:
        k, reads = pending.popleft()
        following = next(upcoming, None)
        if following is not None:
            pending.append((following, submit(following)))
        yield k, crop_of(k, reads)


def _find_corrupt_chunk(
    reader: ChunkReader | None, start: np.ndarray, stop: np.ndarray
) -> CorruptChunk | None:
    """The first chunk of the box ``[start, stop)`` that cloud-volume cannot decode (the chunk
    behind a failed tensorstore read), or None."""
    if reader is None:
        return None
    for key in reader.chunks_of(start, stop):
        try:
            reader.read(key)
        except CorruptChunk as error:
            return error
        except cv_exceptions.EmptyVolumeException:
            continue
    return None


def _blank(array: np.ndarray, kind: str) -> str | None:
    """What a manifest row says of a constant cutout (the volume holds no image there: such a
    cutout is skipped, never trained on), or None."""
    if array.min() == array.max():
        return f"{kind} constant (every voxel = {int(array.flat[0])})"
    return None


def _stack_options(kind: str) -> dict[str, Any]:
    # minisblack: a stack must never be taken for RGB(A); no compression: memory-mappable.
    return {"photometric": "minisblack", "metadata": {"axes": STACK_AXES[kind]}}


def _start_stack(file: Any, kind: str, shape: tuple[int, ...]) -> int:
    """Write the header of an uncompressed uint8 TIFF stack of ``shape`` to the open ``file``
    and leave it at the start of the pixel data, so the cutouts are then appended in order with
    ``file.write``: sequential writes, cheaper than faulting in the pages of a memory map.
    Returns the offset of the pixel data."""
    shape = tuple(int(n) for n in shape)
    offset, _ = tifffile.imwrite(file, shape=shape, dtype=np.uint8, returnoffset=True,
                                 **_stack_options(kind))
    file.seek(offset)
    return int(offset)


def _shrink_stack(path: Path, kind: str, offset: int, shape: tuple[int, ...]) -> None:
    """Rewrite the stack at ``path``, whose header was written for more cutouts than it got
    (some synapses were skipped while reading), as a stack of its first ``shape[0]`` cutouts:
    the header must state how many there are. Copies sequentially, a block at a time."""
    with atomic_path(path) as tmp, open(path, "rb") as old, open(tmp, "r+b") as new:
        _start_stack(new, kind, shape)
        old.seek(offset)
        remaining = int(np.prod(shape))
        while remaining:
            block = old.read(min(remaining, 64 * 2**20))
            if not block:
                raise OSError(f"{path}: ended {remaining} bytes early while shrinking it")
            new.write(block)
            remaining -= len(block)


def write_stack(path: str | Path, kind: str, array: np.ndarray) -> None:
    """Write ``array`` ((N, Y, X) for ``kind`` "2d", (N, Z, Y, X) for "3d", uint8) atomically
    as a cutout stack, the same bytes :func:`cut_shard` writes."""
    ndim = len(STACK_AXES[kind])
    if array.dtype != np.uint8 or array.ndim != ndim or len(array) == 0:
        raise DataError(f"a {kind} cutout stack is a non-empty uint8 array of {ndim} axes; got "
                        f"{array.dtype} of shape {array.shape} for {str(path)!r}.")
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, array, **_stack_options(kind))


def _cutout_extent(patch_size: np.ndarray, cube_size: np.ndarray) -> np.ndarray:
    """XYZ voxels of the union box read per synapse: the patch and the cube around a centre."""
    return np.maximum(np.array([patch_size[0], patch_size[1], 1]), cube_size)


def check_cutout_fits(
    patch_size: Sequence[int], cube_size: Sequence[int], info: VolumeInfo
) -> None:
    """Refuse cutout sizes larger than the volume on some axis, naming both sizes: no synapse
    could then be cut, whatever its position."""
    extent = _cutout_extent(np.asarray(patch_size), np.asarray(cube_size))
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


def _outside_message(
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
        f"{_bbox_text(info.bounds_start, info.bounds_stop)}."
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


def _empty_manifest(rows: pd.DataFrame) -> pd.DataFrame:
    manifest = rows.copy()
    for column in MANIFEST_COLUMNS:
        manifest[column] = pd.Series([None] * len(rows), index=rows.index, dtype=object)
    manifest["stack_index"] = pd.Series(pd.NA, index=rows.index, dtype="Int64")
    return manifest


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
    patch_size = _check_size(size_2d, 2, "size_2d")
    cube_size = _check_size(size_3d, 3, "size_3d")
    rows = plan[plan["shard"] == shard].reset_index(drop=True)
    manifest = _empty_manifest(rows)
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
        raise DataError(_outside_message(rows, centres, position_resolution, info,
                                         _cutout_extent(patch_size, cube_size)))

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


def _read_shard_manifest(shard_dir: Path) -> pd.DataFrame:
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
    require_columns(frame, ["id", "split", "label", *MANIFEST_COLUMNS], str(path))
    return frame


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
    listed stack is missing, damaged or too short, any split x class combination has no
    cutout, or more than ``max_skipped_fraction`` of all planned synapses were skipped.
    """
    out_root = Path(out_root)
    frames = [_read_shard_manifest(Path(shard_dir)) for shard_dir in shard_dirs]
    if not frames:
        raise DataError("cutouts: no shard directories to gather. Set cutout.shards >= 1.")
    # Empty shards carry no rows; leaving them out keeps pandas from guessing their dtypes.
    non_empty = [frame for frame in frames if len(frame)]
    everything = pd.concat(non_empty or frames[:1], ignore_index=True)
    ok = everything[everything["status"] == OK].reset_index(drop=True)

    for kind in STACK_NAMES:
        for relative, rows in ok.groupby(f"path_{kind}"):
            open_stack(out_root / relative, kind, length=int(rows["stack_index"].max()) + 1)

    skipped = everything.loc[everything["status"] != OK, "status"].value_counts()
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
    shard_stats = []
    for shard_dir in shard_dirs:
        stats_path = Path(shard_dir) / "stats.json"
        if stats_path.is_file():
            shard_stats.append(read_json(stats_path))
    if empty:
        raise DataError(
            "cutouts: no usable cutout for " + "; ".join(empty) + ". Every split needs both "
            "classes: add synapses of that class (more data or another split seed) or fix why "
            "they were skipped (out_of_bounds usually means a position-unit mix-up or too "
            "large a cutout)." + _out_of_bounds_hint(skipped.to_dict(), shard_stats)
        )
    n_skipped = int(len(everything) - len(ok))
    stats = {
        "shards": len(frames),
        "planned": int(len(everything)),
        "written": int(len(ok)),
        "skipped": {str(reason): int(count) for reason, count in skipped.items()},
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
    extent = _cutout_extent(np.asarray(sized["size_2d"]), np.asarray(sized["size_3d"]))
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


# --------------------------------------------------------------------------------------------
# Reading the stacks (for the data loader)
# --------------------------------------------------------------------------------------------


def open_stack(
    path: str | Path, kind: str, item_shape: Sequence[int] | None = None,
    length: int | None = None,
) -> np.ndarray:
    """Memory-map a shard's TIFF stack of ``kind`` ("2d": (N, Y, X), "3d": (N, Z, Y, X)),
    read-only.

    Reads the TIFF's page directories, not its pixels. Raises :class:`DataError` naming the
    file if it is missing, unreadable, compressed or truncated, not uint8, of another item
    shape than ``item_shape``, or shorter than ``length`` cutouts.
    """
    path = Path(path)
    rerun = rerun_shard(path.parent)
    expected = len(STACK_AXES[kind])
    if not path.is_file():
        raise DataError(f"cutout stack {str(path)!r} is missing. {rerun}")
    try:
        with tifffile.TiffFile(path) as tiff:
            series = tiff.series[0]
            shape, dtype, offset = tuple(series.shape), series.dtype, series.dataoffset
            pages = len(tiff.pages)
    except Exception as error:  # tifffile raises TiffFileError, ValueError, OSError, ...
        raise DataError(f"cutout stack {str(path)!r} is unreadable ({error}). {rerun}") from error
    if dtype != np.uint8 or len(shape) != expected:
        raise DataError(
            f"cutout stack {str(path)!r} holds {dtype} of shape {shape}, expected uint8 with "
            f"{expected} axes ({STACK_AXES[kind]}). {rerun}"
        )
    if item_shape is not None and shape[1:] != tuple(item_shape):
        raise DataError(
            f"cutout stack {str(path)!r} holds cutouts of shape {shape[1:]}, expected "
            f"{tuple(item_shape)} (cut with other cutout sizes). {rerun}"
        )
    if offset is None:
        raise DataError(
            f"cutout stack {str(path)!r} is compressed or not contiguous, so it cannot be "
            f"memory-mapped. {rerun}"
        )
    # A cut-off stack can keep all its pixels and lose the page directories written after them,
    # which other TIFF readers need: the page count sees that.
    expected_pages, pixels_end = int(np.prod(shape[:-2])), offset + int(np.prod(shape))
    size = path.stat().st_size
    if pages != expected_pages or size < pixels_end:
        raise DataError(
            f"cutout stack {str(path)!r} is truncated or damaged: {pages} of its "
            f"{expected_pages} pages are readable, {size} bytes of the {pixels_end} its pixels "
            f"need at least. {rerun}"
        )
    if length is not None and shape[0] < length:
        raise DataError(
            f"cutout stack {str(path)!r} holds {shape[0]} cutouts, but the manifest lists "
            f"row {length - 1}. {rerun}"
        )
    return np.memmap(path, dtype=np.uint8, mode="r", offset=offset, shape=shape)
