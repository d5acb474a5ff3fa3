"""Reading the boxes of a shard's synapses from the volume: every needed chunk once through
cloud-volume's decoder, through tensorstore, or one read per synapse; holes and damaged
chunks become skipped synapses with the reason."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from cloudvolume import exceptions as cv_exceptions

from synapse_ei.cutout.manifest import MISSING_CHUNK
from synapse_ei.cutout.plan import bbox_text
from synapse_ei.cutout.volume import ChunkReader, CorruptChunk, missing_chunks, VolumeInfo
from synapse_ei.errors import DataError

log = logging.getLogger(__name__)


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
        f"{bbox_text(start, stop)}. A chunk that exists but does not decode is most likely a "
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
            f"{bbox_text(starts[k], stops[k])}: chunk {reader.chunk_name(key)!r} is stored "
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
                    f"{bbox_text(start, stop)} ({error}). Re-create that region's chunks, or "
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
