"""The leakage audit in the workflow: what an enabled audit plans, and reuses."""

from __future__ import annotations

import re
import subprocess

import yaml

from paths import MINI
from snakemake_helpers import run_snakemake


def _dry_run(tmp_path, audit: dict) -> subprocess.CompletedProcess:
    """Plan the mini workflow with ``audit`` as its leakage_audit config."""
    config = yaml.safe_load(MINI.read_text())
    config["leakage_audit"] = audit
    path = tmp_path / "audit.yaml"
    path.write_text(yaml.safe_dump(config))
    return run_snakemake(tmp_path, "-n", configfile=path, check=False)


def test_enabled_audit_plans_the_leaky_jobs_and_reuses_the_cutouts(tmp_path):
    result = _dry_run(tmp_path, {"enabled": True, "model": "cnn2d"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", result.stdout, flags=re.MULTILINE))
    assert {rule: counts.get(rule) for rule in (
        "leaky_split", "leaky_manifest", "train_leaky", "train_connectivity_leaky",
        "evaluate_leaky", "evaluate_connectivity_leaky", "leakage_audit", "cutout", "train",
    )} == {
        "leaky_split": "1", "leaky_manifest": "1", "train_leaky": "1",
        "train_connectivity_leaky": "1", "evaluate_leaky": "1",
        "evaluate_connectivity_leaky": "1", "leakage_audit": "1",
        "cutout": "3", "train": "2",  # the mini config's shards and models, nothing more
    }
    for output in ("results/audit/leakage.json", "results/audit/leaky/models/cnn2d/model.pt",
                   "results/audit/leaky/models/connectivity/model.joblib"):
        assert output in result.stdout
