"""A record of every workflow run: package versions, the config, the git commit, the dataset.

Snakemake calls :func:`start_run_record` when a run starts and :func:`finish_run_record` when it
ends; the record is ``results/runs/<start time>.json``. It holds no environment variables, so no
secret (a CAVE token) can reach it.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from synapse_ei.config import plain
from synapse_ei.outputs import read_json, write_json

#: The distributions whose versions decide what a run computes.
PACKAGES = (
    "synapse-ei", "snakemake", "snakemake-executor-plugin-slurm", "torch", "torchvision",
    "kornia", "numpy", "scipy", "pandas", "pyarrow", "scikit-learn", "cloud-volume", "tifffile",
    "tensorstore", "caveclient", "neuroglancer",
)  # fmt: skip


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution, None for one that is not installed."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_state(directory: str | Path) -> dict[str, Any]:
    """The commit checked out in ``directory`` and whether the work tree differs from it.

    ``{"commit": None, ...}`` outside a git checkout (e.g. an unpacked release archive).
    """

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(directory), *args], capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def start_run_record(
    results: str | Path, config: Mapping[str, Any], workflow_dir: str | Path
) -> Path:
    """Write ``results/runs/<start time>.json`` for a run that is starting; return its path."""
    started = time.strftime("%Y-%m-%dT%H-%M-%S")
    path = Path(results) / "runs" / f"{started}-{os.getpid()}.json"
    write_json(
        path,
        {
            "status": "running",
            "started": started,
            "finished": None,
            "command": sys.argv,
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "packages": package_versions(),
            "git": git_state(workflow_dir),
            "config": plain(config),
            "dataset": None,
        },
    )
    return path


def finish_run_record(path: str | Path, succeeded: bool, dataset_provenance: str | Path) -> None:
    """Mark the run record finished and copy in the dataset provenance the query stage wrote."""
    path = Path(path)
    record = read_json(path)
    record["status"] = "succeeded" if succeeded else "failed"
    record["finished"] = time.strftime("%Y-%m-%dT%H-%M-%S")
    dataset = Path(dataset_provenance)
    record["dataset"] = read_json(dataset) if dataset.is_file() else None
    write_json(path, record)
