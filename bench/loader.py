"""Training input throughput: samples per second delivered from stored cutouts.

Usage: ``python bench/loader.py [--cutouts 512] [--batch-size 64] [--workers 0 2]``

Writes ``--cutouts`` random uint8 cutouts of the MICrONS sizes (2D 256x256, 3D 128x128x32) as
the cutout stage writes them (one TIFF each, and the shard's packed ``.npy`` of all of them),
then measures, side by side in one run and for each kind:

- ``tiff read``: :meth:`synapse_ei.data.CutoutDataset.read` from the TIFFs, the checked read
  alone, one cutout at a time;
- ``tiff loader``: batches from :func:`synapse_ei.data.make_loader` over a
  :class:`~synapse_ei.data.CutoutDataset` of the TIFFs (manifest without pack columns), no
  augmentation;
- ``packed loader``: the same over the packs, as training reads them (uint8 batches, read one
  slice per pack), no augmentation;
- ``packed loader+aug``: the same with the training augmentations (:func:`build_transforms`);
- ``floor``: slicing the memory-mapped pack into a uint8 batch and nothing else, workers 0.

Each loader row is measured for every ``--workers`` count. Batches are uint8 (float32 after
augmentation): :func:`synapse_ei.data.to_model_input` scales them on the device, which is the
training step's cost, not the loader's. The files are read from the page cache (they were just
written): a cold read from a network file system adds its own cost.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
import torch

from synapse_ei.cutout import PACK_NAMES
from synapse_ei.data import CutoutDataset, build_transforms, make_loader

SHAPES = {"2d": (256, 256), "3d": (32, 128, 128)}  # as stored: (Y, X) and (Z, Y, X)


def write_cutouts(root: Path, n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` random 2D and 3D cutouts under ``root`` as TIFFs and packs, and their manifest."""
    rng = np.random.default_rng(seed)
    packs = {kind: np.empty((n, *shape), dtype=np.uint8) for kind, shape in SHAPES.items()}
    for kind in SHAPES:
        (root / kind).mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        for kind, shape in SHAPES.items():
            packs[kind][i] = rng.integers(1, 255, size=shape, dtype=np.uint8)
            tifffile.imwrite(root / kind / f"{i}.tif", packs[kind][i], photometric="minisblack")
        rows.append({"id": i, "pre_pt_root_id": i, "split": "train",
                     "label": ("excitatory", "inhibitory")[i % 2],
                     "path_2d": f"2d/{i}.tif", "path_3d": f"3d/{i}.tif",
                     "packed_2d": PACK_NAMES["2d"], "packed_3d": PACK_NAMES["3d"],
                     "pack_index": i})
    for kind, array in packs.items():
        np.save(root / PACK_NAMES[kind], array)
    return pd.DataFrame(rows)


def rate(fn, n_samples: int) -> float:
    started = time.perf_counter()
    fn()
    return n_samples / (time.perf_counter() - started)


def loader_rate(dataset: CutoutDataset, batch_size: int, workers: int, n_samples: int) -> float:
    loader = make_loader(dataset, batch_size, seed=0, shuffle=True, num_workers=workers,
                         num_samples=n_samples, drop_last=True)

    def run():
        for x, _ in loader:
            assert x.shape[0] == batch_size

    delivered = (n_samples // batch_size) * batch_size
    return rate(run, delivered)


def floor_rate(pack: Path, batch_size: int) -> float:
    """Random uint8 batches sliced out of the memory-mapped pack, and nothing else."""
    array = np.load(pack, mmap_mode="r")
    order = np.random.default_rng(0).permutation(len(array))
    batches = [np.sort(order[i:i + batch_size])
               for i in range(0, len(order) - batch_size + 1, batch_size)]
    return rate(lambda: [torch.from_numpy(array[rows]) for rows in batches],
                len(batches) * batch_size)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cutouts", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--aug-samples", type=int, default=256,
                        help="samples per augmented measurement (augmentation is slow)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="rounds per measurement; each keeps its best")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # workers are the parallelism; one intra-op thread each

    def best(fn) -> float:
        return max(fn() for _ in range(args.rounds))

    root = Path(tempfile.mkdtemp(prefix="synapse-ei-loader-", dir=args.dir))
    results: dict[str, dict[str, float]] = {}
    try:
        manifest = write_cutouts(root, args.cutouts)
        tiffs = manifest.drop(columns=["packed_2d", "packed_3d", "pack_index"])
        n = len(manifest)
        for kind in SHAPES:
            tiff_set = CutoutDataset(tiffs, root, kind)
            packed = CutoutDataset(manifest, root, kind)
            augmented = CutoutDataset(manifest, root, kind,
                                      transform=build_transforms(kind, train=True))
            assert packed.packs and not tiff_set.packs
            row = {"tiff read": best(lambda: rate(lambda: [tiff_set.read(i) for i in range(n)], n))}
            for workers in args.workers:
                row[f"tiff loader w={workers}"] = best(
                    lambda: loader_rate(tiff_set, args.batch_size, workers, n))
                row[f"packed loader w={workers}"] = best(
                    lambda: loader_rate(packed, args.batch_size, workers, n))
                row[f"packed loader+aug w={workers}"] = best(lambda: loader_rate(
                    augmented, args.batch_size, workers, min(n, args.aug_samples)))
            row["floor"] = best(lambda: floor_rate(root / PACK_NAMES[kind], args.batch_size))
            results[kind] = {key: round(value, 1) for key, value in row.items()}
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"samples/s, {args.cutouts} stored cutouts, batch {args.batch_size}, "
          f"shapes {SHAPES}:")
    for kind, row in results.items():
        print(f"  {kind}: " + ", ".join(f"{key} {value:.0f}" for key, value in row.items()))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
