"""Cutout stacks and a manifest for the dataset and transform tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from synapse_ei.cutout.stacks import write_stack

SIZE_2D = (32, 32)  # (Y, X) as stored
SIZE_3D = (8, 16, 16)  # (Z, Y, X) as stored


def write_cutouts(root: Path, n: int = 12) -> Path:
    """n cutouts (a 2D and a 3D stack) with values 40..200 and a manifest; every 4th is
    inhibitory."""
    rng = np.random.default_rng(0)
    for kind, shape in (("2d", SIZE_2D), ("3d", SIZE_3D)):
        write_stack(root / f"shards/000/{kind}.tif", kind,
                    rng.integers(40, 201, (n, *shape), dtype=np.uint8))
    rows = []
    for i in range(n):
        label = "inhibitory" if i % 4 == 0 else "excitatory"
        split = "train" if i < n // 2 else ("val" if i < 3 * n // 4 else "test")
        rows.append({"id": 1000 + i, "pre_pt_root_id": 864691135000000000 + i, "split": split,
                     "label": label, "path_2d": "shards/000/2d.tif",
                     "path_3d": "shards/000/3d.tif", "stack_index": i})
    manifest = root / "manifest.parquet"
    pd.DataFrame(rows).to_parquet(manifest, index=False)
    return manifest
