"""A shard's TIFF stacks: ``2d.tif`` (N, Y, X) and ``3d.tif`` (N, Z, Y, X) of raw uint8 EM,
written uncompressed and contiguous so training memory-maps them (:func:`open_stack`).

Imports only numpy and tifffile: the data loader reads stacks without cloud-volume."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from synapse_ei.cutout.manifest import rerun_shard
from synapse_ei.errors import DataError
from synapse_ei.outputs import atomic_path

#: The cutout kinds, and the name of each kind's TIFF stack in a shard directory.
STACK_NAMES = {"2d": "2d.tif", "3d": "3d.tif"}
#: The axes of a stack of each kind (tifffile's shaped metadata): Q counts the synapses.
STACK_AXES = {"2d": "QYX", "3d": "QZYX"}


def _stack_options(kind: str) -> dict[str, Any]:
    # minisblack: a stack must never be taken for RGB(A); no compression: memory-mappable.
    return {"photometric": "minisblack", "metadata": {"axes": STACK_AXES[kind]}}


def start_stack(file: Any, kind: str, shape: tuple[int, ...]) -> int:
    """Write the header of an uncompressed uint8 TIFF stack of ``shape`` to the open ``file``
    and leave it at the start of the pixel data, so the cutouts are then appended in order with
    ``file.write``: sequential writes, cheaper than faulting in the pages of a memory map.
    Returns the offset of the pixel data."""
    shape = tuple(int(n) for n in shape)
    offset, _ = tifffile.imwrite(file, shape=shape, dtype=np.uint8, returnoffset=True,
                                 **_stack_options(kind))
    file.seek(offset)
    return int(offset)


def shrink_stack(path: Path, kind: str, offset: int, shape: tuple[int, ...]) -> None:
    """Rewrite the stack at ``path``, whose header was written for more cutouts than it got
    (some synapses were skipped while reading), as a stack of its first ``shape[0]`` cutouts:
    the header must state how many there are. Copies sequentially, a block at a time."""
    with atomic_path(path) as tmp, open(path, "rb") as old, open(tmp, "r+b") as new:
        start_stack(new, kind, shape)
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
