"""Reading the boxes of a shard's synapses from the EM volume. This docstring is the one
description of the cutout readers (``cutout.reader``); the README, config/README.md and
BENCHMARKS.md point here.

:func:`read_shard` picks the reader and yields ``(k, crop)`` for the ``k``-th synapse of the
shard, in the given (Morton) order; ``crop(start, stop)`` returns the synapse's patch or cube
as a C-contiguous (Z, Y, X) array, the TIFF page order. Every reader writes the same bytes
(tested on jpeg, raw and gzip volumes, with holes).

A synapse needs the chunks its patch or its cube touches, not every chunk of the box around
both: that box's corners hold chunks neither reads (at the MICrONS sizes a synapse's patch and
cube touch ~16.6 chunks on average, the box around them ~26.3: BENCHMARKS.md, "Scale on paper").
Only those chunks are read, and only a missing one of those skips the synapse.

- ``chunks`` (:func:`iter_boxes`): every chunk the synapses need is decoded once by cloud-volume's
  own decoder (:class:`~synapse_ei.cutout.volume.ChunkReader`, byte-identical to a ``vol[...]``
  read without its per-call overhead) and kept in a cache only until the last box that needs
  it. Chunks are decoded in waves, ``threads`` at a time (by default 1 for a local volume:
  decoding holds the GIL for part of its time and threads add switching; 8 for a remote one,
  whose reads wait on the network), into at most ``lru_bytes`` (raised, if need be, to what the
  largest box touches); when the cache is full, the chunk needed again latest is dropped
  first (Belady's rule) and read again later. A missing chunk (a hole in the volume) skips the
  synapses that need it as ``missing_chunk``, naming the chunk, and is not asked for again.
  Works on sharded volumes too.
- ``tensorstore`` (:func:`iter_tensorstore_boxes`): tensorstore reads the patch and the cube of
  :data:`TENSORSTORE_AHEAD` synapses at a time and decodes in its own threads (by default the
  CPUs the job may use), with a chunk cache of ``lru_bytes``. It reads a missing chunk, and
  cloud-volume's default gzip-compressed raw chunks stored as ``.gz`` files, as zeros without
  an error, so the shard first checks which needed chunks have a file it can read: synapses
  that need a missing chunk are skipped as ``missing_chunk`` (naming it), as with ``chunks``,
  and a ``.gz`` chunk stops the shard, naming the synapse and the chunk. Unsharded volumes only.
- ``auto`` (the default): ``tensorstore`` where that check finds every needed chunk readable on
  an unsharded volume (it was measured faster, bench/cutout.py), ``chunks`` elsewhere; the
  shard's ``stats.json`` says which ran (``"auto: tensorstore"``).
- ``per_synapse`` (:func:`_read_boxes`): one cloud-volume read of the patch and one of the
  cube per synapse, no cache; the reference the others are tested and benchmarked against (not
  a config choice).

With any reader, a chunk that exists but cannot be decoded stops the shard with a
:class:`~synapse_ei.errors.DataError` naming its file and a synapse whose box needs it (a
broken download or copy, which fetching it again repairs), and :mod:`synapse_ei.cutout.shard`
reads in the job's main thread while one writer thread cuts and writes, so a job asks for
2 CPUs.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from cloudvolume import exceptions as cv_exceptions

from synapse_ei.cutout.manifest import MISSING_CHUNK
from synapse_ei.cutout.plan import bbox_text
from synapse_ei.cutout.volume import (
    ChunkReader,
    CorruptChunk,
    missing_chunks,
    open_tensorstore,
    VolumeInfo,
)
from synapse_ei.errors import DataError

log = logging.getLogger(__name__)


#: Decoded chunks kept per shard: neighbouring synapses share chunks, so each is decoded once.
DEFAULT_LRU_BYTES = 256 * 2**20
#: Chunk reads in flight for a remote volume: they wait on the network, so more threads than
#: cores pay off. A local volume is decoded in the calling thread: decoding holds the GIL, and
#: threads only add switching (as cloud-volume itself does for file://).
DEFAULT_READ_THREADS = 8
#: The readers :func:`read_shard` knows (the module docstring describes them).
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


#: A synapse's boxes to read: ``[(patch_start, patch_stop), (cube_start, cube_stop)]``, each an
#: (N, 3) XYZ array over the shard's synapses in reading order.
Parts = Sequence[tuple[np.ndarray, np.ndarray]]


def _box_key(start: np.ndarray, stop: np.ndarray) -> tuple[int, ...]:
    return (*map(int, start), *map(int, stop))


def _read_boxes(
    vol: Any, info: VolumeInfo, boxes: Sequence[tuple[np.ndarray, np.ndarray]], synapse_id: Any
) -> Crop:
    """Crops of the XYZ boxes ``[(start, stop), ...]`` of one synapse, each read with one
    cloud-volume call."""
    arrays = {}
    for start, stop in boxes:
        try:
            cutout = vol[start[0] : stop[0], start[1] : stop[1], start[2] : stop[2]]
        except cv_exceptions.EmptyVolumeException as error:
            return _skip_crop(MISSING_CHUNK, f"chunk(s) missing in {error}")
        except Exception as error:  # cloud-volume re-raises the codec's own error type
            raise _corrupt_chunk_error(info, None, synapse_id, start, stop, error) from error
        arrays[_box_key(start, stop)] = np.asarray(cutout)[..., 0]

    def crop(start: np.ndarray, stop: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(arrays[_box_key(start, stop)].T)

    return crop


def _bounding(parts: Parts) -> tuple[np.ndarray, np.ndarray]:
    """The XYZ box around each synapse's parts (what messages name)."""
    return (np.minimum.reduce([np.asarray(start) for start, _ in parts]),
            np.maximum.reduce([np.asarray(stop) for _, stop in parts]))


def _box_needs(reader: ChunkReader, parts: Parts) -> list[list[tuple[int, int, int]]]:
    """Per synapse, the chunks its parts (patch, cube) touch, once each, sorted."""
    return [sorted({key for start, stop in parts for key in reader.chunks_of(start[k], stop[k])})
            for k in range(len(parts[0][0]))]


def _all_boxes(parts: Parts) -> tuple[np.ndarray, np.ndarray]:
    """Every part of every synapse as one list of boxes (for :func:`distinct_chunks`)."""
    return (np.concatenate([np.asarray(start) for start, _ in parts]),
            np.concatenate([np.asarray(stop) for _, stop in parts]))


def read_shard(
    reader: str,
    vol: Any,
    info: VolumeInfo,
    boxes: dict[str, tuple[np.ndarray, np.ndarray]],
    ids: Sequence[Any],
    *,
    lru_bytes: int = DEFAULT_LRU_BYTES,
    threads: int | None = None,
) -> tuple[str, ChunkReader, Iterator[tuple[int, Crop]]]:
    """Read a shard's boxes with ``reader`` (one of :data:`READERS`, as the module docstring
    describes them): ``boxes`` holds the ``(start, stop)`` XYZ arrays of the ``patch`` and the
    ``cube`` of each synapse (any other key is ignored), in reading order, ``ids`` its synapse
    ids (for messages). Only the chunks a patch or a cube touches are read.

    Returns the reader that runs (what ``auto`` chose), the shard's :class:`ChunkReader`
    (``decodes`` counts the chunks the ``chunks`` reader decoded) and the iterator of ``(k,
    crop)``, ``k`` counting the boxes in the given order; ``crop`` cuts the patch or the cube of
    box ``k``. ``threads`` is the number of decoding threads (tensorstore) or reads in flight
    (chunks); None means the reader's default.
    """
    parts = [boxes["patch"], boxes["cube"]]
    chunk_reader = ChunkReader(vol, info)
    holes: dict[int, str] = {}  # auto takes tensorstore only where no chunk is missing
    if reader == "auto":
        reader = _pick_reader(chunk_reader, parts)
    elif reader == "tensorstore":
        holes = _tensorstore_holes(chunk_reader, parts, ids)
    per_box = [[(start[k], stop[k]) for start, stop in parts] for k in range(len(ids))]
    if reader == "tensorstore":
        view = open_tensorstore(info, lru_bytes,
                                threads if threads is not None else len(os.sched_getaffinity(0)))
        crops = iter_tensorstore_boxes(view, per_box, ids, info.path, holes=holes,
                                       chunk_reader=chunk_reader)
    elif reader == "chunks":
        if threads is None:
            threads = 1 if info.path.startswith("file://") else DEFAULT_READ_THREADS
        crops = iter_boxes(chunk_reader, parts, ids, cache_bytes=lru_bytes, threads=threads)
    else:
        crops = ((k, _read_boxes(vol, info, per_box[k], ids[k])) for k in range(len(ids)))
    return reader, chunk_reader, crops


class _ChunkCache:
    """The decoded chunks of one walk over boxes (:func:`iter_boxes`): which boxes need each
    chunk, which of them comes next, the chunks held (at most ``capacity``) and those found
    missing (a hole: read once, never asked for again)."""

    def __init__(self, needs: list[list[tuple]], capacity: int):
        self.needs = needs
        self.capacity = capacity
        self.uses: dict[tuple, list[int]] = {}
        for k, keys in enumerate(needs):
            for key in keys:
                self.uses.setdefault(key, []).append(k)
        self.next_use = {key: 0 for key in self.uses}  # index into uses[key] of its next box
        # key -> (first voxel of the chunk as plain ints, decoded chunk)
        self.held: dict[tuple, tuple[tuple[int, int, int], np.ndarray]] = {}
        self.missing: set[tuple] = set()

    def upcoming(self, key: tuple) -> int:
        """The next box that needs ``key`` (``len(needs)`` if none does)."""
        position = self.next_use[key]
        uses = self.uses[key]
        return uses[position] if position < len(uses) else len(self.needs)

    def next_wave(self, k: int, wave_new: int) -> tuple[int, set[tuple], list[tuple]]:
        """The boxes ``[k, end)`` of the next wave, until their new chunks would exceed
        ``wave_new`` or the cache: ``end``, every chunk they need, and the chunks to read."""
        end, wave, new = k, set(), []
        while end < len(self.needs):
            keys = self.needs[end]
            fresh = [key for key in keys
                     if key not in self.held and key not in wave and key not in self.missing]
            if end > k and (len(new) + len(fresh) > wave_new
                            or len(wave | set(keys)) > self.capacity):
                break
            wave.update(keys)
            new.extend(fresh)
            end += 1
        return end, wave, new

    def make_room(self, wave: set[tuple], n_new: int) -> None:
        """Drop chunks the wave does not need, the one needed again latest first (Belady's
        rule), until ``n_new`` more fit."""
        if len(self.held) + n_new > self.capacity:
            evictable = sorted((key for key in self.held if key not in wave), key=self.upcoming)
            while len(self.held) + n_new > self.capacity:
                del self.held[evictable.pop()]

    def crop(self, k: int, reader: ChunkReader) -> Crop:
        """The crop of box ``k`` out of the chunks held (they must all be held or missing)."""
        holes = [key for key in self.needs[k] if key in self.missing]
        if holes:
            return _skip_crop(MISSING_CHUNK, _missing_detail(reader, holes))
        return _chunk_crop(reader.info.dtype, [self.held[key] for key in self.needs[k]])

    def release(self, k: int) -> None:
        """Box ``k`` is done: drop the chunks no later box needs."""
        for key in self.needs[k]:
            self.next_use[key] += 1
            if self.upcoming(key) == len(self.needs):
                self.held.pop(key, None)


def _decode_wave(
    cache: _ChunkCache, reader: ChunkReader, new: list[tuple],
    submit: Callable[[tuple], Callable[[], np.ndarray]], boxes: range,
    starts: np.ndarray, stops: np.ndarray, ids: Sequence[Any],
) -> None:
    """Read the chunks ``new`` of the wave of ``boxes``, all in flight at once, into the cache
    (a missing one into ``cache.missing``); a corrupt one raises :class:`DataError` naming the
    first box of the wave that needs it."""
    pending = {key: submit(key) for key in new}
    for key in new:
        try:
            chunk = pending[key]()
        except cv_exceptions.EmptyVolumeException:
            cache.missing.add(key)
            continue
        except CorruptChunk as error:
            first = next(j for j in boxes if key in cache.needs[j])
            raise _corrupt_chunk_error(reader.info, error.url, ids[first], starts[first],
                                       stops[first], error.error) from error
        cache.held[key] = (tuple(map(int, reader.chunk_box(key)[0])), chunk)


def iter_boxes(
    reader: ChunkReader,
    parts: Parts,
    ids: Sequence[Any],
    *,
    cache_bytes: int = DEFAULT_LRU_BYTES,
    threads: int = DEFAULT_READ_THREADS,
) -> Iterator[tuple[int, Crop]]:
    """Yield ``(k, crop)`` for every synapse ``k``, in the given order, whose XYZ boxes are
    ``[start[k], stop[k])`` for each ``(start, stop)`` of ``parts``: the ``chunks`` reader of
    the module docstring.

    ``crop(start, stop)`` copies any of synapse ``k``'s boxes out of the decoded chunks as a
    C-contiguous (Z, Y, X) array. It holds the chunks it needs, so it stays valid after later
    items (another thread may call it), at the cost of their memory. Chunks are decoded in
    waves of at most ``4 * threads`` new chunks, ``threads`` at a time, into a cache of at
    most ``cache_bytes``. A box that needs a missing chunk yields a crop that raises
    :class:`SkippedSynapse`; a chunk that exists but cannot be decoded raises
    :class:`DataError` naming its file and the first synapse (from ``ids``) whose box needs it.
    """
    needs = _box_needs(reader, parts)
    starts, stops = _bounding(parts)
    chunk_bytes = int(np.prod(reader.chunk_size)) * np.dtype(reader.info.dtype).itemsize
    cache = _ChunkCache(needs, max(int(cache_bytes) // chunk_bytes,
                                   max((len(keys) for keys in needs), default=1)))
    wave_new = max(1, 4 * int(threads))  # enough reads in flight to keep every thread busy
    with ThreadPoolExecutor(max_workers=max(1, int(threads))) as pool:

        def submit(key: tuple) -> Callable[[], np.ndarray]:
            """Start reading ``key``; call the result to wait for the chunk."""
            if threads <= 1:  # read when waited on, in this thread
                return lambda: reader.read(key)
            return pool.submit(reader.read, key).result

        k = 0
        while k < len(needs):
            end, wave, new = cache.next_wave(k, wave_new)
            cache.make_room(wave, len(new))
            _decode_wave(cache, reader, new, submit, range(k, end), starts, stops, ids)
            for j in range(k, end):
                yield j, cache.crop(j, reader)
                cache.release(j)
            k = end


def _missing_detail(reader: ChunkReader, keys: Sequence[tuple]) -> str:
    """What a manifest row says of the missing chunks ``keys`` its box needs."""
    more = f" and {len(keys) - 1} more" if len(keys) > 1 else ""
    return f"chunk {reader.chunk_name(keys[0])} missing{more}"


def _chunk_crop(dtype: str, chunks: list[tuple[tuple[int, int, int], np.ndarray]]) -> Crop:
    """Crops assembled straight from decoded ``(origin, chunk)`` pairs (only the voxels asked
    for). Plain ints: a crop visits up to 17 chunks, and numpy's per-call cost on 3-vectors would
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


def distinct_chunks(reader: ChunkReader, starts: np.ndarray, stops: np.ndarray) -> list[tuple]:
    """Every chunk the XYZ boxes ``[starts[k], stops[k])`` touch, once each, sorted. In numpy:
    :meth:`ChunkReader.chunks_of` per box cost more CPU than the check it feeds."""
    origin, size = reader.info.bounds_start, reader.chunk_size
    first = (np.asarray(starts) - origin) // size
    last = (np.asarray(stops) - 1 - origin) // size
    if len(first) == 0:
        return []
    span = (last - first).max(axis=0) + 1
    touched = [first + (dx, dy, dz) for dz in range(span[2]) for dy in range(span[1])
               for dx in range(span[0])]
    keys = np.concatenate([keys[np.all(keys <= last, axis=1)] for keys in touched])
    return [(int(x), int(y), int(z)) for x, y, z in np.unique(keys, axis=0)]


def _tensorstore_misreads(reader: ChunkReader, parts: Parts) -> dict[tuple, str]:
    """The chunks the synapses' boxes need that tensorstore would read as zeros without an
    error: ``{chunk: "missing" | "gzip"}`` (cloud-volume's default ``.gz`` raw chunks)."""
    return missing_chunks(reader, distinct_chunks(reader, *_all_boxes(parts)))


def _pick_reader(reader: ChunkReader, parts: Parts) -> str:
    """The reader ``auto`` means for these boxes: tensorstore, which decodes in its own threads
    (measured faster, bench/cutout.py), wherever it reads every needed chunk as stored."""
    if reader.sharded:
        return "chunks"
    misreads = _tensorstore_misreads(reader, parts)
    if misreads:
        log.info("cutout reader: chunks, since tensorstore would read %d chunk(s) as zeros "
                 "(missing or gzip-compressed)", len(misreads))
        return "chunks"
    return "tensorstore"


def _tensorstore_holes(reader: ChunkReader, parts: Parts, ids: Sequence[Any]) -> dict[int, str]:
    """The boxes (by position) that need a missing chunk, each with its manifest detail:
    tensorstore would read those chunks as zeros, so their synapses are skipped as
    ``missing_chunk`` without a read. Refuses, naming the first synapse that needs one, boxes
    that need a chunk stored as cloud-volume's gzip-compressed ``.gz`` file, which tensorstore
    would also read as zeros although the data is there."""
    misreads = _tensorstore_misreads(reader, parts)
    if not misreads:
        return {}
    needs = _box_needs(reader, parts)
    starts, stops = _bounding(parts)
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
    ``[z, y, x]``) as a (Z, Y, X) array: the ``tensorstore`` reader of the module docstring.
    The reads of ``ahead`` synapses are in flight at once, so tensorstore's threads decode while
    the caller writes. ``volume`` names the volume in errors. Boxes ``k`` in ``holes`` (from
    :func:`_tensorstore_holes`) are not read: their crop raises :class:`SkippedSynapse`. A read
    that fails raises :class:`DataError`; with ``chunk_reader`` it names the chunk, found by
    decoding the box's chunks one by one."""
    holes = holes or {}

    def submit(k: int) -> dict[tuple, Any]:
        return {} if k in holes else _submit_reads(view, boxes[k])

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
        if k in holes:
            yield k, _skip_crop(MISSING_CHUNK, holes[k])
        else:
            yield k, _tensorstore_crop(reads, ids[k], volume, chunk_reader)


def _submit_reads(view: Any, boxes: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[tuple, Any]:
    """Start tensorstore reads of the XYZ ``boxes``: ``{(x0, y0, z0, x1, y1, z1): future}``."""
    reads: dict[tuple, Any] = {}
    for start, stop in boxes:
        (x0, y0, z0), (x1, y1, z1) = map(int, start), map(int, stop)
        reads[(x0, y0, z0, x1, y1, z1)] = view[z0:z1, y0:y1, x0:x1].read()
    return reads


def _tensorstore_crop(
    reads: dict[tuple, Any], synapse_id: Any, volume: str, chunk_reader: ChunkReader | None
) -> Crop:
    """The crop of one synapse's tensorstore ``reads`` (from :func:`_submit_reads`): it waits
    for the box asked for; a failed read raises :class:`DataError`, naming the chunk that does
    not decode if ``chunk_reader`` finds it."""

    def crop(start: np.ndarray, stop: np.ndarray) -> np.ndarray:
        try:
            array = reads[(*map(int, start), *map(int, stop))].result()
        except Exception as error:  # tensorstore raises ValueError and its own errors
            corrupt = _find_corrupt_chunk(chunk_reader, start, stop)
            if corrupt is not None:
                raise _corrupt_chunk_error(chunk_reader.info, corrupt.url, synapse_id, start,
                                           stop, corrupt.error) from error
            raise DataError(
                f"EM volume {volume!r}: tensorstore cannot read synapse id {synapse_id}, bbox "
                f"{bbox_text(start, stop)} ({error}). Re-create that region's chunks, or "
                "use cutout.reader: chunks."
            ) from error
        return np.ascontiguousarray(array)

    return crop


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
