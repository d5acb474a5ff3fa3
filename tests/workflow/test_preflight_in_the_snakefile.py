"""In the Snakefile: a Slurm run on real data runs the preflight checks before its first
sbatch."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import yaml

from paths import REPO
from snakemake_helpers import run_snakemake


def test_a_slurm_run_on_real_data_checks_before_its_first_job(tmp_path):
    """Through profiles/slurm, with stand-in Slurm commands that record their calls: an EM path
    cloud-volume cannot read stops the run in onstart, before anything reaches sbatch."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.log"
    for name in ("sbatch", "sinfo", "sacct", "squeue", "scontrol", "sacctmgr", "sshare"):
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\necho "{name} $*" >> {calls}\n')
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
    tables = tmp_path / "synapses.csv"
    tables.write_text("id,pre_pt_root_id\n")
    config = yaml.safe_load((REPO / "tests" / "config" / "mini.yaml").read_text())
    config["dataset"] = {"source": "files", "files": {
        "synapses": str(tables), "cell_types": str(tables), "em_path": f"file://{tmp_path}/no-em",
        "position_resolution": [4, 4, 40],
    }}  # fmt: skip
    configfile = tmp_path / "files.yaml"
    configfile.write_text(yaml.safe_dump(config))
    environment = {**os.environ, "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}"}
    run = run_snakemake(
        tmp_path / "run", "--profile", str(REPO / "profiles" / "slurm"), "--slurm-no-account",
        configfile=configfile, env=environment, cwd=REPO, timeout=300, check=False,
    )  # fmt: skip
    log = run.stdout + run.stderr
    assert run.returncode != 0, log[-3000:]
    assert "preflight: no job was submitted" in log and "- EM volume: EM volume" in log, log[-3000:]
    assert "no-em" in log
    recorded = calls.read_text() if calls.exists() else ""
    assert "sacct" in recorded and "sbatch" not in recorded, recorded
