"""The readers' chunk bookkeeping: which chunks a shard's boxes touch."""

from __future__ import annotations

import numpy as np

from synapse_ei.cutout.readers import distinct_chunks
from synapse_ei.cutout.volume import ChunkReader, open_volume, volume_info
from volume_helpers import OFFSET, SIZE, make_volume


def test_the_distinct_chunks_are_those_the_boxes_touch_once_each(tmp_path):
    path, _, _ = make_volume(tmp_path, "raw", compress=False, with_mip1=False)
    vol = open_volume(path, 0)
    reader = ChunkReader(vol, volume_info(vol))
    rng = np.random.default_rng(3)
    # Boxes of several sizes, so they span 1 to 4 chunks per axis, some on chunk borders.
    sizes = rng.integers(1, 150, size=(200, 3)) // np.array([1, 1, 6]) + 1
    starts = np.array(OFFSET) + rng.integers(0, np.array(SIZE) - sizes)
    starts[:10] = np.array(OFFSET) + np.array([64, 128, 16])  # starts on a chunk border
    stops = starts + sizes
    expected = sorted({key for a, b in zip(starts, stops) for key in reader.chunks_of(a, b)})
    assert distinct_chunks(reader, starts, stops) == expected
    assert len(expected) > 8
    assert distinct_chunks(reader, starts[:0], stops[:0]) == []
