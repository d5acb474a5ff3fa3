"""Training input throughput: samples per second delivered from stored cutouts.

Usage: ``python bench/loader.py [--cutouts 512] [--batch-size 64] [--workers 0 2]
[--kinds 2d 3d] [--aug-samples 256] [--threads 2] [--paired 0]``

Writes ``--cutouts`` random uint8 cutouts of the MICrONS sizes (2D 256x256, 3D 128x128x32) as
the cutout stage writes them (a shard's TIFF stack per kind), then measures, side by side in
one run and for each kind:

- ``read one``: :meth:`synapse_ei.learn.dataset.CutoutDataset.read`, the checked read alone,
  one cutout at a time;
- ``loader``: batches from :func:`synapse_ei.learn.dataset.make_loader` over a
  :class:`~synapse_ei.learn.dataset.CutoutDataset`, as training reads them (uint8 batches, one
  slice of the memory-mapped stack per cutout), no augmentation;
- ``per-sample aug``: the default training augmentations as they ran before issue 17, for
  comparison: torchvision v2 ops on each cutout in turn (flips, any-angle rotation, brightness/
  contrast, noise; a cube's sections as a batch of one parameter set; z flip);
- ``loader+aug``: the loader with the default training augmentations as training runs them
  now (:func:`build_transforms`: one :class:`~synapse_ei.learn.augment.BatchAugmentation` call
  on each whole batch, one resampling per cutout);
- ``one grid_sample``: the floor of ``loader+aug``: the loader (workers 0), the batch scaled
  to [0, 1] floats and put through one bilinear ``grid_sample`` (a random rotation per cutout),
  nothing else;
- ``floor``: slicing the memory-mapped stack into a uint8 batch and nothing else, workers 0.

Each loader row is measured for every ``--workers`` count, one intra-op thread per process;
the rows marked ``t=`` again with workers 0 and ``--threads`` intra-op threads.
Plain batches are uint8 (float32 after augmentation):
:func:`synapse_ei.learn.transforms.to_model_input` scales them on the device, which is the
training step's cost, not the loader's. The files are read from the page cache (they were just
written): a cold read from a network file system adds its own cost.

``--paired K`` then measures the comparison of issue 17's goal again, as K pairs: in each
round ``per-sample aug`` and ``loader+aug`` with workers 0 and ``--threads`` intra-op threads
(how a training job on those cores runs), one right after the other, in alternating order. It
prints each round's ratio and their median and range: the VM's speed swings between runs by
more than the methods differ (BENCHMARKS.md), and the two halves of one pair see the same
machine, where the best of each row may come from different minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

# As the training job runs (scripts/train.py); THP_MEM_ALLOC_ENABLE=0 measures without.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from synapse_ei.cutout.stacks import open_stack, STACK_NAMES, write_stack
from synapse_ei.learn.augment import linear_grid, MID_GREY, to_unit_range
from synapse_ei.learn.dataset import CutoutDataset, make_loader
from synapse_ei.learn.transforms import build_transforms

SHAPES = {"2d": (256, 256), "3d": (32, 128, 128)}  # as stored: (Y, X) and (Z, Y, X)


def write_cutouts(root: Path, n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` random 2D and 3D cutouts under ``root`` as the shard's two stacks, and their
    manifest."""
    rng = np.random.default_rng(seed)
    for kind, shape in SHAPES.items():
        write_stack(root / STACK_NAMES[kind], kind,
                    rng.integers(1, 255, size=(n, *shape), dtype=np.uint8))
    return pd.DataFrame({
        "id": np.arange(n), "pre_pt_root_id": np.arange(n), "split": "train",
        "label": np.array(["excitatory", "inhibitory"])[np.arange(n) % 2],
        "path_2d": STACK_NAMES["2d"], "path_3d": STACK_NAMES["3d"], "stack_index": np.arange(n),
    })


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


class PerSampleReference:
    """The default augmentations as the loader applied them before issue 17: torchvision v2 on
    one cutout at a time (a cube's sections as a v2 batch sharing one draw), then z flip and
    noise. Only here, to measure the batched version against it in the same run."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.in_plane = v2.Compose([
            v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(),
            v2.RandomRotation(180.0, v2.InterpolationMode.BILINEAR, fill=MID_GREY),
            v2.ColorJitter(brightness=0.15, contrast=0.15)])
        self.noise = v2.GaussianNoise(sigma=0.03, clip=True)

    def one(self, item: torch.Tensor) -> torch.Tensor:
        item = to_unit_range(item)
        if self.kind == "2d":
            return self.noise(self.in_plane(item))
        sections = self.in_plane(item[0].unsqueeze(1)).squeeze(1)  # (D, H, W)
        if torch.rand(()) < 0.5:
            sections = sections.flip(0)
        return self.noise(sections.unsqueeze(0))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.one(item) for item in x])


def grid_sample_rate(dataset: CutoutDataset, batch_size: int, n_samples: int) -> float:
    """The loader (workers 0), each batch scaled to [0, 1] and resampled once: one bilinear
    ``grid_sample`` with a random rotation per cutout, a cube's sections as its channels."""
    loader = make_loader(dataset, batch_size, seed=0, shuffle=True, num_samples=n_samples,
                         drop_last=True)
    generator = torch.Generator().manual_seed(0)

    def run():
        for x, _ in loader:
            one_grid_sample(x, generator)

    return rate(run, (n_samples // batch_size) * batch_size)


def one_grid_sample(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The augmentations' floor: raw uint8 ``x`` scaled to [0, 1] and resampled once, one
    bilinear ``grid_sample`` with a random rotation per cutout (drawn from the CPU
    ``generator``), a cube's sections as its channels, on ``x``'s device."""
    n, height, width = len(x), x.shape[-2], x.shape[-1]
    angle = ((torch.rand(n, generator=generator) * 2 - 1) * math.pi).to(x.device)
    cos, sin = angle.cos(), angle.sin()
    matrix = torch.stack([torch.stack([cos, sin], 1), torch.stack([-sin, cos], 1)], 1)
    grid = linear_grid(matrix, height, width)  # the batched path's grid
    return F.grid_sample(to_unit_range(x).reshape(n, -1, height, width), grid,
                         mode="bilinear", padding_mode="zeros", align_corners=False)


def floor_rate(stack: Path, kind: str, batch_size: int) -> float:
    """Random uint8 batches sliced out of the memory-mapped stack, and nothing else."""
    array = open_stack(stack, kind)
    order = np.random.default_rng(0).permutation(len(array))
    batches = [np.sort(order[i:i + batch_size])
               for i in range(0, len(order) - batch_size + 1, batch_size)]
    return rate(lambda: [torch.from_numpy(array[rows]) for rows in batches],
                len(batches) * batch_size)


def paired_rates(before: CutoutDataset, augmented: CutoutDataset, batch_size: int,
                  n_samples: int, rounds: int) -> list[tuple[float, float]]:
    """``rounds`` pairs of rates (per-sample, batched), each pair measured back to back
    (workers 0), the pair's order alternating from round to round."""
    pairs = []
    for k in range(rounds):
        first, second = (before, augmented) if k % 2 == 0 else (augmented, before)
        rates = [loader_rate(dataset, batch_size, 0, n_samples) for dataset in (first, second)]
        rate_before, rate_batched = rates if k % 2 == 0 else rates[::-1]
        pairs.append((round(rate_before, 1), round(rate_batched, 1)))
    return pairs


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cutouts", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--aug-samples", type=int, default=256,
                        help="samples per augmented measurement (augmentation is slow)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="rounds per measurement; each keeps its best")
    parser.add_argument("--kinds", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--threads", type=int, default=2,
                        help="intra-op threads of the workers-0 rows marked t=")
    parser.add_argument("--paired", type=int, default=0,
                        help="rounds of per-sample against batched augmentation, one pair a "
                             "round, workers 0 and --threads threads (0: none)")
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
        n = len(manifest)
        for kind in args.kinds:
            plain = CutoutDataset(manifest, root, kind)
            augmented = CutoutDataset(manifest, root, kind,
                                      transform=build_transforms(kind, train=True))
            before = CutoutDataset(manifest, root, kind, transform=PerSampleReference(kind))
            n_aug = min(n, args.aug_samples)
            row = {"read one": best(lambda: rate(lambda: [plain.read(i) for i in range(n)], n))}
            for workers in args.workers:
                row[f"loader w={workers}"] = best(
                    lambda: loader_rate(plain, args.batch_size, workers, n))
                row[f"per-sample aug w={workers}"] = best(lambda: loader_rate(
                    before, args.batch_size, workers, n_aug))
                row[f"loader+aug w={workers}"] = best(lambda: loader_rate(
                    augmented, args.batch_size, workers, n_aug))
            row["one grid_sample w=0"] = best(
                lambda: grid_sample_rate(plain, args.batch_size, n_aug))
            # Workers 0 with every core as intra-op threads: the batched ops parallelise.
            torch.set_num_threads(args.threads)
            row[f"per-sample aug w=0 t={args.threads}"] = best(lambda: loader_rate(
                before, args.batch_size, 0, n_aug))
            row[f"loader+aug w=0 t={args.threads}"] = best(lambda: loader_rate(
                augmented, args.batch_size, 0, n_aug))
            torch.set_num_threads(1)
            row["floor"] = best(lambda: floor_rate(root / STACK_NAMES[kind], kind,
                                                   args.batch_size))
            results[kind] = {key: round(value, 1) for key, value in row.items()}
            if args.paired:
                torch.set_num_threads(args.threads)
                results[kind]["paired rates"] = paired_rates(
                    before, augmented, args.batch_size, n_aug, args.paired)
                torch.set_num_threads(1)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"samples/s, {args.cutouts} stored cutouts, batch {args.batch_size}, "
          f"shapes {SHAPES}:")
    for kind, row in results.items():
        print(f"  {kind}: " + ", ".join(f"{key} {value:.0f}" for key, value in row.items()
                                        if key != "paired rates"))
        for setting in [f"w={workers}" for workers in args.workers] + [f"w=0 t={args.threads}"]:
            batched = row[f"loader+aug {setting}"]
            print(f"  {kind} {setting}: batched / per-sample augmentation "
                  f"{batched / row[f'per-sample aug {setting}']:.2f}x")
        print(f"  {kind}: one grid_sample / batched augmentation (w=0, one thread) "
              f"{row['one grid_sample w=0'] / row['loader+aug w=0']:.2f}x")
        if "paired rates" in row:
            ratios = [batched / before for before, batched in row["paired rates"]]
            print(f"  {kind} w=0 t={args.threads}, {len(ratios)} paired rounds: batched / "
                  f"per-sample median {statistics.median(ratios):.2f}x (range "
                  f"{min(ratios):.2f}-{max(ratios):.2f}x; "
                  + ", ".join(f"{r:.2f}" for r in ratios) + ")")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
