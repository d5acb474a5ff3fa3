"""Training input throughput: samples per second delivered from stored cutouts.

Usage: ``python bench/loader.py [--cutouts 512] [--batch-size 64] [--workers 0 2]``

Writes ``--cutouts`` random uint8 cutouts of the MICrONS sizes (2D 256x256, 3D 128x128x32) as
the cutout stage writes them (one TIFF each), then measures, side by side in one run and for each
kind:

- ``read``: :meth:`synapse_ei.data.CutoutDataset.read`, the checked TIFF read alone;
- ``loader``: batches from :func:`synapse_ei.data.make_loader` over a
  :class:`~synapse_ei.data.CutoutDataset` (float32, normalised), without augmentation;
- ``loader+aug``: the same with the training augmentations (:func:`build_transforms`);
- ``bound``: the same cutouts from one memory-mapped uint8 ``.npy``, batched as uint8 (what a
  packed per-shard form with normalisation on the GPU would cost the CPU), workers 0.

Each loader row is measured for every ``--workers`` count. The files are read from the page
cache (they were just written): a cold read from a network file system adds its own cost.
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

from synapse_ei.data import CutoutDataset, build_transforms, make_loader

SHAPES = {"2d": (256, 256), "3d": (32, 128, 128)}  # as stored: (Y, X) and (Z, Y, X)


def write_cutouts(root: Path, n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` random 2D and 3D cutout TIFFs under ``root`` and their manifest."""
    rng = np.random.default_rng(seed)
    rows = []
    for kind, shape in SHAPES.items():
        (root / kind).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        for kind, shape in SHAPES.items():
            array = rng.integers(1, 255, size=shape, dtype=np.uint8)
            tifffile.imwrite(root / kind / f"{i}.tif", array, photometric="minisblack")
        rows.append({"id": i, "pre_pt_root_id": i, "split": "train",
                     "label": ("excitatory", "inhibitory")[i % 2],
                     "path_2d": f"2d/{i}.tif", "path_3d": f"3d/{i}.tif"})
    return pd.DataFrame(rows)


class PackedUint8(torch.utils.data.Dataset):
    """Items straight out of a memory-mapped (N, ...) uint8 array: the input pipeline's floor."""

    def __init__(self, path: Path) -> None:
        self.array = np.load(path, mmap_mode="r")

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.array[index]))


def rate(fn, n_samples: int) -> float:
    started = time.perf_counter()
    fn()
    return n_samples / (time.perf_counter() - started)


def loader_rate(dataset: CutoutDataset, batch_size: int, workers: int, n_samples: int) -> float:
    loader = make_loader(dataset, batch_size, seed=0, shuffle=True, num_workers=workers,
                         num_samples=n_samples, drop_last=True)

    def run():
        for x, _ in loader:
            assert x.dtype == torch.float32

    delivered = (n_samples // batch_size) * batch_size
    return rate(run, delivered)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cutouts", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--aug-samples", type=int, default=256,
                        help="samples per augmented measurement (augmentation is slow)")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # workers are the parallelism; one intra-op thread each

    root = Path(tempfile.mkdtemp(prefix="synapse-ei-loader-", dir=args.dir))
    results: dict[str, dict[str, float]] = {}
    try:
        manifest = write_cutouts(root, args.cutouts)
        n = len(manifest)
        for kind in SHAPES:
            plain = CutoutDataset(manifest, root, kind,
                                  transform=build_transforms(kind, train=False))
            augmented = CutoutDataset(manifest, root, kind,
                                      transform=build_transforms(kind, train=True))
            row = {"read": rate(lambda: [plain.read(i) for i in range(n)], n)}
            for workers in args.workers:
                row[f"loader w={workers}"] = loader_rate(plain, args.batch_size, workers, n)
                row[f"loader+aug w={workers}"] = loader_rate(
                    augmented, args.batch_size, workers, min(n, args.aug_samples))
            packed = root / f"{kind}.npy"
            np.save(packed, np.stack([plain.read(i) for i in range(n)]))
            loader = torch.utils.data.DataLoader(PackedUint8(packed), batch_size=args.batch_size,
                                                 shuffle=True, drop_last=True)
            row["bound"] = rate(lambda: [batch for batch in loader],
                                (n // args.batch_size) * args.batch_size)
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
