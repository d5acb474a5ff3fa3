"""Print where a run's results are and how long each stage took (from Snakemake benchmarks).

Usage: ``python -m synapse_ei.stage_times results``
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd


def stage_times(results: str | Path) -> pd.DataFrame:
    """Wall time per rule (summed over its jobs) from ``results/benchmarks/**/*.tsv``."""
    rows = []
    for path in sorted(Path(results, "benchmarks").rglob("*.tsv")):
        relative = path.relative_to(Path(results, "benchmarks"))
        rule = relative.parts[0] if len(relative.parts) > 1 else relative.stem
        seconds = float(pd.read_csv(path, sep="\t")["s"].iloc[0])
        rows.append({"stage": rule, "job": str(relative.with_suffix("")), "seconds": seconds})
    if not rows:
        return pd.DataFrame(columns=["stage", "jobs", "seconds"])
    frame = pd.DataFrame(rows)
    table = frame.groupby("stage", sort=False).agg(jobs=("job", "count"), seconds=("seconds", "sum"))
    return table.reset_index()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    results = Path(args[0] if args else "results")
    table = stage_times(results)
    print(f"\nResults are in {results.resolve()}:")
    for name, what in [
        ("summary/models.md", "model comparison"),
        ("eval/<model>/", "per-model metrics.json and figures"),
        ("splits/audit.json", "split audit"),
        ("cutouts/", "cutouts: TIFF stacks per shard, manifest"),
    ]:
        print(f"  {results / name}  ({what})")
    summary = results / "summary" / "models.md"
    if summary.exists():
        print("\n" + summary.read_text())
    if len(table):
        print("Wall time per stage (summed over a stage's jobs; jobs run in parallel):")
        print(table.to_string(index=False, float_format=lambda s: f"{s:8.1f} s"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
