"""Reading precomputed EM volumes (local synthetic or MICrONS on S3) through one code path.

Every geometric fact (resolution, offset, size, chunking) is read from the volume's ``info`` at
the requested mip, never assumed, and table positions are converted to volume voxels in exactly
one place: :func:`~synapse_ei.cutout.geometry.table_to_volume_voxels`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
from cloudfiles import CloudFiles, compression
from cloudfiles import exceptions as cf_exceptions
from cloudvolume import Bbox, CloudVolume
from cloudvolume import exceptions as cv_exceptions
from cloudvolume.datasource.precomputed.image import rx

# Plain geometry (the plan uses it without cloud-volume), imported here for the readers.
from synapse_ei.cutout.geometry import table_to_volume_voxels, VolumeInfo  # noqa: F401
from synapse_ei.errors import DataError

#: How every volume is opened unless a caller overrides a key: a missing chunk inside the bounds
#: must raise (not read as zeros) and a box outside the bounds must raise (not be cropped).
DEFAULT_OPEN_KWARGS: dict[str, Any] = {"fill_missing": False, "bounded": True, "progress": False}


def _normalise_path(path: str) -> str:
    """Accept a bare local directory as well as a URL (``file://``, ``precomputed://...``)."""
    path = str(path)
    if "://" not in path:
        return "file://" + os.path.abspath(path)
    return path


def open_volume(path: str, mip: int, **kwargs: Any) -> CloudVolume:
    """Open the precomputed volume at ``path`` for reading at ``mip``.

    Defaults are :data:`DEFAULT_OPEN_KWARGS` (``fill_missing=False``, ``bounded=True``,
    ``progress=False``); ``kwargs`` (e.g. ``lru_bytes``) are passed on to ``CloudVolume``.
    Raises :class:`DataError` naming the path if the info file is missing or unreadable, or if the
    volume has no scale ``mip``.
    """
    url = _normalise_path(path)
    options = {**DEFAULT_OPEN_KWARGS, **kwargs}
    try:
        vol = CloudVolume(url, mip=mip, **options)
    except cv_exceptions.InfoUnavailableError as error:
        raise DataError(
            f"EM volume {path!r}: no readable 'info' file ({error}). Check that the path points "
            "at a precomputed volume (the folder holding 'info'), that it is spelled with its "
            "protocol (file://, precomputed://https://, gs://, s3://) and that it is reachable."
        ) from error
    except cv_exceptions.ScaleUnavailableError as error:
        raise DataError(
            f"EM volume {path!r}: has no mip {mip} ({error}). Set cutout.mip to one of the "
            "volume's scales."
        ) from error
    except (cv_exceptions.UnsupportedProtocolError, cv_exceptions.InfoError) as error:
        raise DataError(
            f"EM volume {path!r}: cannot be opened ({error}). Check the path."
        ) from error
    except (OSError, ValueError, KeyError) as error:
        raise DataError(
            f"EM volume {path!r} at mip {mip}: cannot be opened ({type(error).__name__}: {error}). "
            "Check the path, its 'info' file and the network."
        ) from error
    n_scales = len(vol.info.get("scales", []))
    if not 0 <= mip < n_scales:
        raise DataError(
            f"EM volume {path!r}: has {n_scales} scale(s), no mip {mip}. Set cutout.mip to a value "
            f"in 0..{n_scales - 1}."
        )
    return vol


def volume_info(vol: CloudVolume) -> VolumeInfo:
    """Describe ``vol`` at its current mip from its ``info`` file.

    Raises :class:`DataError` naming the volume if a scale entry lacks a key.
    """
    mip = int(vol.mip)
    try:
        scale = vol.info["scales"][mip]
        chunk = scale["chunk_sizes"][0]
        return VolumeInfo(
            path=str(vol.cloudpath),
            mip=mip,
            resolution=tuple(float(value) for value in scale["resolution"]),
            voxel_offset=tuple(int(value) for value in scale.get("voxel_offset", (0, 0, 0))),
            size=tuple(int(value) for value in scale["size"]),
            chunk_size=tuple(int(value) for value in chunk),
            encoding=str(scale["encoding"]),
            dtype=str(vol.info["data_type"]),
        )
    except (KeyError, IndexError, TypeError) as error:
        raise DataError(
            f"EM volume {vol.cloudpath!r}: its info file lacks {error} for mip {mip}. The info "
            "file is incomplete; regenerate it (CloudVolume.create_new_info + commit_info)."
        ) from error


#: What a sharded volume's read raises for data it fetched but cannot decode: cloud-volume's
#: own errors, cloud-files' for a damaged compressed file, and the codecs' ``ValueError``.
_UNDECODABLE = (
    cv_exceptions.DecodingError,
    cf_exceptions.DecompressionError,
    ValueError,
)


class CorruptChunk(Exception):
    """A chunk whose file exists but cannot be read or decoded: ``url`` names it, ``error`` says
    what went wrong (cloud-volume re-raises its codec's own error, e.g. simplejpeg's
    ``ValueError: Premature end of JPEG file``, so no narrower type catches them all)."""

    def __init__(self, url: str, error: Exception):
        super().__init__(f"{url}: {type(error).__name__}: {error}")
        self.url = url
        self.error = error


class ChunkReader:
    """Reads and decodes single storage chunks of one volume at one mip, thread-safely.

    A chunk is named by its grid index (XYZ, counted from the volume's ``voxel_offset``); its box
    is the grid cell clipped to the volume bounds, exactly as the chunk files are cut. Unsharded
    volumes are read file by file through cloud-files and decoded with cloud-volume's own decoder
    (so the values equal a ``vol[...]`` read byte for byte, without its per-call overhead);
    sharded volumes go through ``vol.download`` of the chunk's box. A missing chunk raises
    cloud-volume's ``EmptyVolumeException``, as a ``vol[...]`` read with ``fill_missing=False``
    does; one that exists but cannot be read or decoded raises :class:`CorruptChunk` naming its
    file. ``decodes`` counts the chunks decoded.
    """

    def __init__(self, vol: CloudVolume, info: VolumeInfo):
        self.vol = vol
        self.info = info
        self.chunk_size = np.asarray(info.chunk_size, dtype=np.int64)
        self.decodes = 0
        self._sharded = bool(vol.image.is_sharded(info.mip))
        self._key = vol.meta.key(info.mip)
        self._local = threading.local()
        self._lock = threading.Lock()

    def chunk_box(self, index: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """``(start, stop)`` XYZ voxels of chunk ``index``, clipped to the volume bounds."""
        start = self.info.bounds_start + np.asarray(index, dtype=np.int64) * self.chunk_size
        return start, np.minimum(start + self.chunk_size, self.info.bounds_stop)

    def chunks_of(self, start: np.ndarray, stop: np.ndarray) -> list[tuple[int, int, int]]:
        """Grid indices of every chunk the XYZ box ``[start, stop)`` touches, x fastest."""
        first = (np.asarray(start) - self.info.bounds_start) // self.chunk_size
        last = (np.asarray(stop) - 1 - self.info.bounds_start) // self.chunk_size
        return [
            (int(x), int(y), int(z))
            for z in range(first[2], last[2] + 1)
            for y in range(first[1], last[1] + 1)
            for x in range(first[0], last[0] + 1)
        ]

    def chunk_name(self, index: Sequence[int]) -> str:
        """The storage key of chunk ``index`` (unsharded volumes), relative to the volume."""
        return f"{self._key}/{_box_name(*self.chunk_box(index))}"

    def chunk_url(self, index: Sequence[int]) -> str:
        """Where chunk ``index`` is stored, for messages: its file (unsharded volumes), or its
        box inside the shard files of a sharded one."""
        if self._sharded:
            start, stop = self.chunk_box(index)
            return (f"{self.vol.meta.cloudpath}/{self._key} (sharded) chunk "
                    f"{_box_name(start, stop)}")
        return f"{self.vol.meta.cloudpath}/{self.chunk_name(index)}"

    @property
    def sharded(self) -> bool:
        return self._sharded

    def read(self, index: Sequence[int]) -> np.ndarray:
        """Decode chunk ``index`` as an (X, Y, Z) array of the volume's dtype (first channel)."""
        start, stop = self.chunk_box(index)
        if self._sharded:
            try:
                array = np.asarray(
                    self.vol.download(Bbox(start, stop), mip=self.info.mip))[..., 0]
            except _UNDECODABLE as error:  # not network errors: those say nothing of the data
                raise CorruptChunk(self.chunk_url(index), error) from error
        else:
            name = self.chunk_name(index)
            files = getattr(self._local, "files", None)
            if files is None:  # one client per thread: cloud-files sessions are not shared
                files = self._local.files = CloudFiles(
                    self.vol.meta.cloudpath, secrets=self.vol.config.secrets
                )
            # Fetched raw, decompressed here: a network error raises from get() as it is, and
            # every error after it is the file's own (each codec raises its own type).
            (fetched,) = files.get([name], raw=True)
            try:
                content = fetched["content"]
                if content is not None:
                    content = compression.decompress(content, fetched["compress"], name)
                # fill_missing=False: empty content raises EmptyVolumeException, not zeros.
                array = rx.decode(self.vol.meta, name, content, False, self.info.mip)[..., 0]
            except cv_exceptions.EmptyVolumeException:
                raise
            except Exception as error:  # a truncated .gz, a short raw or jpeg chunk
                raise CorruptChunk(self.chunk_url(index), error) from error
        with self._lock:
            self.decodes += 1
        return array


def _box_name(start: np.ndarray, stop: np.ndarray) -> str:
    """A chunk's file name in the precomputed format: ``x0-x1_y0-y1_z0-z1``."""
    return f"{start[0]}-{stop[0]}_{start[1]}-{stop[1]}_{start[2]}-{stop[2]}"


def missing_chunks(reader: ChunkReader, indices: Sequence[Sequence[int]]) -> dict[tuple, str]:
    """The chunks among ``indices`` that have no file a reader other than cloud-volume can
    read, as ``{index: why}`` ("missing", or "gzip" for cloud-volume's default gzip-compressed
    raw chunks, stored locally as ``<key>.gz``, which tensorstore takes for missing).

    Unsharded volumes only: a sharded volume keeps its chunks inside shard files.
    """
    if reader.sharded:
        raise DataError(
            f"EM volume {reader.info.path!r}: sharded; its chunks cannot be checked one by one. "
            "Use cutout.reader: chunks (cloud-volume)."
        )
    names = {tuple(map(int, index)): reader.chunk_name(index) for index in indices}
    found: dict[tuple, str] = {}
    if reader.info.path.startswith("file://"):
        root = reader.info.path[len("file://"):]
        for index, name in names.items():
            path = os.path.join(root, name)
            if not os.path.isfile(path):
                found[index] = "gzip" if os.path.isfile(path + ".gz") else "missing"
        return found
    exists = CloudFiles(reader.vol.meta.cloudpath, secrets=reader.vol.config.secrets).exists(
        list(names.values()))
    return {index: "missing" for index, name in names.items() if not exists.get(name)}


def open_tensorstore(info: VolumeInfo, cache_bytes: int, threads: int) -> Any:
    """The volume at ``info.mip`` through tensorstore, as a read-only view indexed
    ``[z, y, x]`` in volume voxels (the TIFF page order), with a decoded-chunk cache of
    ``cache_bytes`` and ``threads`` decoding threads.

    Tensorstore reads a missing chunk as zeros without an error: check the chunks a read needs
    with :func:`missing_chunks` first.
    """
    import tensorstore as ts  # only this reader needs it

    url = info.path.removeprefix("precomputed://")
    spec = {
        "driver": "neuroglancer_precomputed",
        "kvstore": url if url.endswith("/") else url + "/",
        "scale_index": int(info.mip),
        "recheck_cached_data": False,  # a volume does not change during a cutout job
        "context": {
            "cache_pool": {"total_bytes_limit": int(cache_bytes)},
            "data_copy_concurrency": {"limit": int(threads)},
        },
    }
    try:
        store = ts.open(spec, read=True).result()
    except Exception as error:  # tensorstore raises ValueError and its own status errors
        raise DataError(
            f"EM volume {info.path!r} at mip {info.mip}: tensorstore cannot open it ({error}). "
            "Use cutout.reader: chunks (cloud-volume)."
        ) from error
    return store[:, :, :, 0].T
