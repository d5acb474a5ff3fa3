"""Cutout throughput: the workflow's chunk reader against the naive loop and the decode bound.

Usage: ``python bench/cutout.py [--synapses 2000] [--naive-sample 100] [--rounds 2]
[--placement random|isolated] [--shape X Y Z] [--dir DIR]``

On a local jpeg precomputed volume shaped like MICrONS mip 0 (8x8x40 nm, 128x128x16 chunks),
built once and cached under ``DIR``, cuts the MICrONS sizes (2D 256x256, 3D 128x128x32) of
``--synapses`` random synapses as one shard, side by side in one run:

- ``workflow``: :func:`synapse_ei.cutout.shard.cut_shard` (each chunk decoded once, the shard's two
  TIFF stacks written) with its default reader, ``auto`` (here tensorstore: the volume is
  unsharded and its chunks are plain files; decoding threads: the CPUs it may use), and with
  ``reader="chunks"`` (``workflow_chunks``: cloud-volume's decoder in one thread);
- ``(a) naive``: the same, but one cloud-volume read per synapse with no cache, on a random
  ``--naive-sample`` of the synapses (it decodes ~27 chunks per synapse; a rate needs no more);
- ``(b) decode bound``: every chunk the shard's patches and cubes touch, read and decoded exactly
  once, and nothing else;
- ``(w) write``: writing the same outputs from memory as cut_shard writes them (the shard's two
  TIFF stacks), the output's share of any cutout job.

Placement: ``random`` (default) draws the synapses uniformly in the volume, so at the default
2,000 synapses in 1,152 chunks neighbours share most chunks (0.58 chunk decodes per synapse) and the
writes weigh as much as they ever can against the decoding. ``isolated`` puts one synapse, at a
random position, in each 3x3x3-chunk cell of the volume, so no two share a chunk and each needs
the ~16.6 chunks of a synapse in a training set drawn from the whole of MICrONS (BENCHMARKS.md,
"Scale on paper"): the density a cluster-scale run cuts at. ``--synapses`` is then at most the
number of cells.

Each is run ``--rounds`` times, interleaved, and keeps its best wall and CPU time: on a shared
machine the load of others comes and goes, and CPU seconds (this process, all threads) are the
steadier measure. Prints cutouts per wall and per CPU second and the ratios (of the best times,
and the workflow's against the decode bound within each round, for the spread); ``--json`` also
writes them to a file.
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

from synapse_ei.cutout.plan import cutout_boxes, plan_shards
from synapse_ei.cutout.readers import distinct_chunks
from synapse_ei.cutout.shard import cut_shard
from synapse_ei.cutout.stacks import STACK_NAMES, start_stack
from synapse_ei.cutout.volume import ChunkReader, open_volume, table_to_volume_voxels, volume_info

RESOLUTION = (8, 8, 40)
TABLE_RESOLUTION = (4, 4, 40)
CHUNK = (128, 128, 16)
OFFSET = (128 * 200, 128 * 160, 16 * 1000)
SIZE_2D = (256, 256)
SIZE_3D = (128, 128, 32)


def build_volume(path: Path, shape: tuple[int, int, int], seed: int = 0) -> str:
    """Write (once) a jpeg volume of EM-like texture: smooth structure plus shot noise."""
    from cloudvolume import CloudVolume

    stamp = path / f"complete-{'x'.join(map(str, shape))}-{seed}"
    url = f"file://{path}"
    if stamp.exists():
        return url
    shutil.rmtree(path, ignore_errors=True)
    info = CloudVolume.create_new_info(
        num_channels=1, layer_type="image", data_type="uint8", encoding="jpeg",
        resolution=list(RESOLUTION), voxel_offset=list(OFFSET), volume_size=list(shape),
        chunk_size=list(CHUNK),
    )
    vol = CloudVolume(url, info=info, progress=False, compress=False)
    vol.commit_info()
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    for z0 in range(0, shape[2], CHUNK[2]):
        z1 = min(z0 + CHUNK[2], shape[2])
        z = np.arange(z0, z1)[None, None, :]
        slab = 128 + 50 * np.sin(x[..., None] / 9.0 + z / 5.0) * np.cos(y[..., None] / 13.0)
        slab = slab + rng.normal(0, 12, size=(*shape[:2], z1 - z0))
        data = np.clip(slab, 1, 254).astype(np.uint8)
        vol[OFFSET[0] : OFFSET[0] + shape[0], OFFSET[1] : OFFSET[1] + shape[1],
            OFFSET[2] + z0 : OFFSET[2] + z1] = data[..., None]
    stamp.touch()
    return url


def random_synapses(n: int, shape: tuple[int, int, int], seed: int = 0) -> pd.DataFrame:
    """``n`` synapses whose whole 2D and 3D cutouts lie inside the volume (4x4x40 positions)."""
    rng = np.random.default_rng(seed)
    margin = np.array([SIZE_2D[0] // 2 + 1, SIZE_2D[1] // 2 + 1, SIZE_3D[2] // 2 + 1])
    centres = rng.integers(np.array(OFFSET) + margin, np.array(OFFSET) + np.array(shape) - margin,
                           size=(n, 3))
    return pd.DataFrame({
        "id": np.arange(10**6, 10**6 + n, dtype=np.int64),
        "ctr_pt_position_x": centres[:, 0] * 2,
        "ctr_pt_position_y": centres[:, 1] * 2,
        "ctr_pt_position_z": centres[:, 2],
    })


def isolated_synapses(n: int, shape: tuple[int, int, int], seed: int = 0) -> pd.DataFrame:
    """Up to ``n`` synapses, one per 3x3x3-chunk cell, none sharing a chunk with another.

    A cell spans 384x384x48 voxels; the box around the patch and the cube (256x256x32) starts at
    a random voxel of the cell's first chunk, so it lies inside the cell and the patch and the
    cube cross chunk borders as boxes placed at random do (~16.6 chunks a synapse).
    """
    cell = 3 * np.array(CHUNK)
    extent = np.array([SIZE_2D[0], SIZE_2D[1], SIZE_3D[2]])  # the box around both, XYZ
    counts = np.array(shape) // cell
    if counts.min() < 1:
        raise SystemExit(f"--shape {shape} holds no 3x3x3-chunk cell of {tuple(cell)} voxels")
    cells = np.stack(np.meshgrid(*(np.arange(c) for c in counts), indexing="ij"), -1).reshape(-1, 3)
    rng = np.random.default_rng(seed)
    cells = cells[rng.permutation(len(cells))[:n]]
    start = np.array(OFFSET) + cells * cell + rng.integers(0, np.array(CHUNK), size=cells.shape)
    centres = start + np.array([extent[0] // 2, extent[1] // 2, SIZE_3D[2] // 2])
    return pd.DataFrame({
        "id": np.arange(10**6, 10**6 + len(cells), dtype=np.int64),
        "ctr_pt_position_x": centres[:, 0] * 2,
        "ctr_pt_position_y": centres[:, 1] * 2,
        "ctr_pt_position_z": centres[:, 2],
    })


def chunk_bytes(path: Path) -> float:
    """Mean size of a stored chunk file (bytes)."""
    sizes = [file.stat().st_size for file in (path / "8_8_40").iterdir()]
    return round(float(np.mean(sizes)), 1)


def timed(fn) -> tuple[float, float]:
    """Wall and CPU seconds (this process, all threads) of ``fn()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def needed_chunks(url: str, synapses: pd.DataFrame) -> tuple[ChunkReader, list]:
    """A chunk reader and every chunk the synapses' patches and cubes touch."""
    vol = open_volume(url, 0)
    reader = ChunkReader(vol, volume_info(vol))
    centres = table_to_volume_voxels(
        synapses[["ctr_pt_position_x", "ctr_pt_position_y", "ctr_pt_position_z"]].to_numpy(),
        TABLE_RESOLUTION, RESOLUTION,
    )
    boxes = cutout_boxes(centres, SIZE_2D, SIZE_3D)
    starts, stops = (np.concatenate([boxes[kind][end] for kind in ("patch", "cube")])
                     for end in (0, 1))
    return reader, distinct_chunks(reader, starts, stops)


def write_only(out: Path, n: int) -> None:
    """Write the 2D and 3D TIFF stacks of ``n`` cutouts of the cutout sizes as cut_shard does."""
    rng = np.random.default_rng(0)
    patch = rng.integers(1, 255, size=SIZE_2D[::-1], dtype=np.uint8)
    cube = rng.integers(1, 255, size=SIZE_3D[::-1], dtype=np.uint8)
    for kind in STACK_NAMES:
        (out / STACK_NAMES[kind]).touch()  # as atomic_path's temporary file is
    with (open(out / STACK_NAMES["2d"], "r+b") as stack_2d,
          open(out / STACK_NAMES["3d"], "r+b") as stack_3d):
        start_stack(stack_2d, "2d", (n, *patch.shape))
        start_stack(stack_3d, "3d", (n, *cube.shape))
        for _ in range(n):
            stack_2d.write(patch.data)
            stack_3d.write(cube.data)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--synapses", type=int, default=2000)
    parser.add_argument("--naive-sample", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2,
                        help="interleaved rounds; each method keeps its best (a shared machine's "
                        "load comes and goes)")
    parser.add_argument("--shape", type=int, nargs=3, default=(1536, 1536, 128),
                        help="volume size in voxels (XYZ)")
    parser.add_argument("--placement", choices=("random", "isolated"), default="random",
                        help="random: uniform in the volume (neighbours share chunks); isolated: "
                        "one per 3x3x3-chunk cell, no chunk shared (a whole-MICrONS training set)")
    parser.add_argument("--threads", type=int, default=None,
                        help="chunk read threads (default: the workflow's, 1 for a local volume)")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "synapse-ei-bench")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    shape = tuple(args.shape)

    built = time.perf_counter()
    em_dir = args.dir / f"em-{'x'.join(map(str, shape))}"  # one cached volume per shape
    url = build_volume(em_dir, shape)
    print(f"volume {url} {shape} ready in {time.perf_counter() - built:.1f} s")
    place = isolated_synapses if args.placement == "isolated" else random_synapses
    synapses = place(args.synapses, shape)
    plan = plan_shards(synapses, 1)
    naive_plan = plan_shards(synapses.sample(n=min(args.naive_sample, len(synapses)),
                                             random_state=0), 1)
    reader, needed = needed_chunks(url, synapses)
    cut = dict(em_path=url, mip=0, position_resolution=TABLE_RESOLUTION, size_2d=SIZE_2D,
               size_3d=SIZE_3D)
    stats: dict = {}
    chunk_stats: dict = {}
    methods = {
        "workflow": (len(plan), lambda out: stats.update(cut_shard(
            plan, 0, out_dir=out / "shards" / "000", **cut))),
        "workflow_chunks": (len(plan), lambda out: chunk_stats.update(cut_shard(
            plan, 0, out_dir=out / "shards" / "000", reader="chunks", threads=args.threads,
            **cut))),
        "naive": (len(naive_plan), lambda out: cut_shard(
            naive_plan, 0, out_dir=out / "shards" / "000", reader="per_synapse", **cut)),
        "decode_bound": (len(plan), lambda out: [reader.read(key) for key in needed]),
        "write": (len(plan), lambda out: write_only(out, len(plan))),
    }
    best = {name: [np.inf, np.inf] for name in methods}
    rounds: list[dict] = []  # each round's (wall, cpu) per method: the ratios' spread
    for _ in range(args.rounds):
        rounds.append({})
        for name, (_, run) in methods.items():
            out = Path(tempfile.mkdtemp(dir=args.dir))
            try:
                wall, cpu = timed(lambda: run(out))
            finally:
                shutil.rmtree(out, ignore_errors=True)
            best[name] = [min(best[name][0], wall), min(best[name][1], cpu)]
            rounds[-1][name] = (wall, cpu)

    result: dict = {
        "synapses": len(plan), "placement": args.placement, "naive_sample": len(naive_plan),
        "volume_shape": list(shape),
        "rounds": args.rounds, "chunks_needed": len(needed),
        "workflow_reader": stats["reader"],
        "chunks_decoded_by_chunks_reader": chunk_stats["chunks_decoded"],
        "chunk_decodes_per_cpu_second": round(len(needed) / best["decode_bound"][1], 1),
        "chunk_decodes_per_synapse": round(len(needed) / len(plan), 2),
        "chunk_bytes_on_disk": chunk_bytes(em_dir),
    }
    bound_plus_write = [a + b for a, b in zip(best["decode_bound"], best["write"])]
    for index, clock in enumerate(("wall", "cpu")):
        rates = {name: count / best[name][index] for name, (count, _) in methods.items()}
        rates["decode_bound_plus_write"] = len(plan) / bound_plus_write[index]
        result[clock] = {
            "cutouts_per_second": {key: round(value, 1) for key, value in rates.items()},
            "speedup_over_naive": round(rates["workflow"] / rates["naive"], 2),
            "slowdown_vs_decode_bound": round(rates["decode_bound"] / rates["workflow"], 2),
            "slowdown_vs_decode_bound_plus_write": round(
                rates["decode_bound_plus_write"] / rates["workflow"], 2),
            "chunks_reader_slowdown_vs_decode_bound": round(
                rates["decode_bound"] / rates["workflow_chunks"], 2),
            "workflow_speedup_over_chunks_reader": round(
                rates["workflow"] / rates["workflow_chunks"], 2),
            # Workflow time over decode-bound time within each round (the same load for both).
            "slowdown_vs_decode_bound_per_round": [
                round(times["workflow"][index] / times["decode_bound"][index], 2)
                for times in rounds],
        }
    print(f"{result['synapses']} synapses placed {args.placement}, {len(needed)} chunks needed "
          f"({result['chunk_decodes_per_synapse']} per synapse), "
          f"{result['chunks_decoded_by_chunks_reader']} decoded by the chunks reader; workflow "
          f"reader {result['workflow_reader']!r} (naive: a sample of "
          f"{result['naive_sample']}); {result['chunk_decodes_per_cpu_second']} chunk decodes "
          f"per CPU second, {result['chunk_bytes_on_disk']:.0f} bytes per chunk file; best of "
          f"{args.rounds} interleaved rounds")
    for clock in ("wall", "cpu"):
        row = result[clock]
        print(f"  per {clock} second: " + ", ".join(
            f"{key} {value:.1f}" for key, value in row["cutouts_per_second"].items()))
        print(f"    workflow vs naive {row['speedup_over_naive']:.2f}x faster; vs decode bound "
              f"{row['slowdown_vs_decode_bound']:.2f}x slower; vs decode bound + write "
              f"{row['slowdown_vs_decode_bound_plus_write']:.2f}x slower")
        print(f"    workflow vs decode bound in each round: "
              f"{', '.join(f'{value:.2f}x' for value in row['slowdown_vs_decode_bound_per_round'])}")
        print(f"    chunks reader vs decode bound "
              f"{row['chunks_reader_slowdown_vs_decode_bound']:.2f}x slower; workflow "
              f"{row['workflow_speedup_over_chunks_reader']:.2f}x faster than it")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
