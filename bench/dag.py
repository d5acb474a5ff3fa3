"""How long Snakemake takes to plan the workflow, for the demo and for a MICrONS-sized run.

Usage: ``python bench/dag.py [--synapses 1000000] [--shards 256] [--repeat 3]``

Writes a ``files``-source dataset with ``--synapses`` synapse rows (a real parquet table, so any
parse-time read of it would show in the time) and a config that is ``config/microns.yaml`` (256
cutout shards, 7 models) pointed at it, then times ``snakemake -n`` on it and on the demo
config side by side, in fresh working directories. Goal: under 10 s for the large one.
``--shards`` replaces microns.yaml's 256: the time per shard job is what sets the schema's
maximum of ``cutout.shards``.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]


def write_dataset(root: Path, n: int, seed: int = 0) -> dict:
    """A synapse table of ``n`` rows and a cell-type table, as the ``files`` source reads them."""
    rng = np.random.default_rng(seed)
    neurons = 864691135_000000000 + np.arange(100_000, dtype=np.int64)
    pd.DataFrame({
        "id": np.arange(n, dtype=np.int64),
        "pre_pt_root_id": rng.choice(neurons, n),
        "post_pt_root_id": rng.choice(neurons, n),
        "ctr_pt_position_x": rng.integers(60_000, 400_000, n),
        "ctr_pt_position_y": rng.integers(50_000, 300_000, n),
        "ctr_pt_position_z": rng.integers(15_000, 27_000, n),
        "size": rng.integers(100, 10_000, n),
    }).to_parquet(root / "synapses.parquet")
    pd.DataFrame({
        "pt_root_id": neurons,
        "cell_type": np.where(np.arange(len(neurons)) % 8 == 0, "BC", "23P"),
        "classification_system": np.where(np.arange(len(neurons)) % 8 == 0,
                                          "inhibitory_neuron", "excitatory_neuron"),
    }).to_parquet(root / "cell_types.parquet")
    return {
        "source": "files",
        "files": {
            "synapses": str(root / "synapses.parquet"),
            "cell_types": str(root / "cell_types.parquet"),
            # Never opened while planning: only the cutout jobs read the volume.
            "em_path": f"precomputed://file://{root / 'em'}",
            "position_resolution": [4, 4, 40],
        },
    }


def dry_run(configfile: Path, workdir: Path) -> tuple[float, int]:
    """Seconds for ``snakemake -n`` and the number of jobs it plans."""
    command = [
        str(Path(sys.executable).with_name("snakemake")), "-n", "--quiet", "rules",
        "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
        "--configfile", str(configfile), "--cores", "2",
    ]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"snakemake -n failed on {configfile}:\n{done.stdout}\n{done.stderr}")
    total = re.search(r"^total\s+(\d+)$", done.stdout, re.MULTILINE)
    return seconds, int(total.group(1)) if total else 0


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--synapses", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=None, help="default: microns.yaml's")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="synapse-ei-dag-") as tmp:
        root = Path(tmp)
        large = yaml.safe_load((REPO / "config" / "microns.yaml").read_text())
        large["dataset"] = write_dataset(root, args.synapses)
        if args.shards is not None:
            large["cutout"]["shards"] = args.shards
        large_config = root / "large.yaml"
        large_config.write_text(yaml.safe_dump(large))
        configs = {
            "demo": REPO / "config" / "config.yaml",
            f"{args.synapses} synapses, {large['cutout']['shards']} shards, "
            f"{len(large['models'])} models": large_config,
        }
        results = {}
        for name, configfile in configs.items():
            runs = [dry_run(configfile, root / f"work-{len(results)}-{i}")
                    for i in range(args.repeat)]
            results[name] = {"seconds": round(min(s for s, _ in runs), 2),
                             "jobs": runs[0][1]}

    print("snakemake -n (best of %d):" % args.repeat)
    for name, row in results.items():
        print(f"  {name:<45} {row['jobs']:5d} jobs  {row['seconds']:6.2f} s")
    demo, big = (row["seconds"] for row in results.values())
    print(f"  large / demo: {big / demo:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
