"""Reading what Snakemake prints, for the workflow and Slurm tests."""

from __future__ import annotations


def job_counts(output: str) -> dict[str, int]:
    """The "Job stats" table Snakemake prints (dry run or real), as {rule: jobs}, with "total"."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split() == ["job", "count"])
    counts = {}
    for line in lines[start + 2 :]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    return counts
