"""A tiny learnable dataset and a training run on it (CPU), for the training and
inference tests; tests/learn/conftest.py makes the dataset and one finished run fixtures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from synapse_ei.cutout.stacks import write_stack
from synapse_ei.learn.train import train_image_model

SETTINGS_2D = {"epochs": 2, "batch_size": 8, "learning_rate": 0.003, "weight_decay": 0.0}


def write_learnable_cutouts(root: Path, n: int = 40) -> Path:
    """Inhibitory cutouts carry a bright central blob; ids 0-23 train, 24-31 val, 32-39 test."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:32, :32]
    blob = np.exp(-((yy - 15.5) ** 2 + (xx - 15.5) ** 2) / 40.0)
    rows = []
    arrays: dict[tuple[int, str], list[np.ndarray]] = {}
    for i in range(n):
        inhibitory = i % 4 == 0
        image = rng.normal(110, 15, (32, 32)) + (80 * blob if inhibitory else 0)
        patch = np.clip(image, 1, 255).astype(np.uint8)
        cube = np.stack([patch[8:24, 8:24]] * 8)  # (Z, Y, X)
        shard = i % 2
        paths = {}
        for kind, array in (("2d", patch), ("3d", cube)):
            arrays.setdefault((shard, kind), []).append(array)
            paths[f"path_{kind}"] = f"shards/{shard:03d}/{kind}.tif"
        split = "train" if i < 24 else ("val" if i < 32 else "test")
        rows.append({"id": 5000 + i, "pre_pt_root_id": 864691135123456789 + i, "split": split,
                     "label": "inhibitory" if inhibitory else "excitatory", **paths,
                     "stack_index": i // 2})
    for (shard, kind), stack in arrays.items():
        write_stack(root / f"shards/{shard:03d}/{kind}.tif", kind, np.stack(stack))
    manifest = root / "manifest.parquet"
    pd.DataFrame(rows).to_parquet(manifest, index=False)
    return manifest


def run(cutouts, work: Path, settings=SETTINGS_2D, architecture="cnn2d", seed=5, threads=1,
        **kwargs):
    root, manifest = cutouts
    return train_image_model(manifest, root, architecture, settings, work / "out", work / "ckpt",
                             seed=seed, device="cpu", threads=threads, **kwargs)


class Interrupted(Exception):
    """What :func:`stop_after_first_epoch` raises: a job killed after its first epoch."""


def stop_after_first_epoch(row) -> None:
    """An ``on_epoch_end`` that stops training after epoch 1; a module-level function, so the
    spawned processes of a data-parallel run can unpickle it."""
    if row["epoch"] == 1:
        raise Interrupted(f"stopped after epoch {row['epoch']}")


def report_threads(row) -> None:
    """An ``on_epoch_end`` that stops training, saying how many intra-op threads its process
    has (module-level, so a data-parallel run's processes can unpickle it)."""
    raise Interrupted(f"intra-op threads {torch.get_num_threads()}")
