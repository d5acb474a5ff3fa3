"""The workflow as users run it: Snakemake on a mini DAG in a temporary directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

REPO = Path(__file__).resolve().parents[1]
MINI = REPO / "tests" / "config" / "mini.yaml"
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
MODELS = ["cnn2d", "r3d_18", "connectivity"]


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run Snakemake on the repo's Snakefile in ``workdir`` with the mini config."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    command = [
        *SNAKEMAKE,
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(MINI),
        *args,
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=workdir)
    if check and result.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n"
            f"{result.stderr[-8000:]}"
        )
    return result


def job_counts(dry_run_output: str) -> dict[str, int]:
    """The "Job stats" table of a Snakemake dry run, as {rule: number of jobs}."""
    lines = dry_run_output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split() == ["job", "count"])
    counts = {}
    for line in lines[start + 2 :]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    return counts


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("mini")
    snakemake(workdir, "--cores", "2")
    return workdir / "results"


def test_dry_run_lists_every_stage(tmp_path):
    jobs = job_counts(snakemake(tmp_path, "-n", "--cores", "2").stdout)
    assert jobs == {
        "synthesize": 1,
        "query": 1,
        "label": 1,
        "split": 1,
        "plan_cutouts": 1,
        "cutout": 3,
        "gather_cutouts": 1,
        "train": 2,
        "train_connectivity": 1,
        "evaluate": 3,
        "summary": 1,
        "all": 1,
        "total": 17,
    }


def test_lint_is_clean():
    result = subprocess.run(
        [*SNAKEMAKE, "--lint"], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_invalid_config_names_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(MINI.read_text().replace("source: synthetic", "source: synthetc"))
    result = snakemake(tmp_path, "-n", "--configfile", str(bad), check=False)
    assert result.returncode != 0
    message = result.stdout + result.stderr
    assert "synthetc" in message and "source" in message


@pytest.mark.workflow
def test_mini_dag_runs_end_to_end(finished_run: Path):
    results = finished_run
    split = pd.read_parquet(results / "splits" / "synapses.parquet")
    # Leakage-free: no presynaptic neuron and no synapse in two splits.
    assert split.groupby("pre_pt_root_id")["split"].nunique().max() == 1
    assert split["id"].is_unique
    assert set(split["split"]) == {"train", "val", "test"}
    assert set(split["label"]) == {"excitatory", "inhibitory"}
    assert split["pre_pt_root_id"].dtype == np.int64

    manifest = pd.read_parquet(results / "cutouts" / "manifest.parquet")
    assert len(manifest) > 0.9 * len(split)
    row = manifest.iloc[0]
    patch = tifffile.imread(results / "cutouts" / row["path_2d"])
    cube = tifffile.imread(results / "cutouts" / row["path_3d"])
    assert patch.dtype == np.uint8 and patch.shape == (32, 32)
    assert cube.dtype == np.uint8 and cube.shape == (8, 16, 16)
    assert patch.std() > 0 and cube.std() > 0

    for model in MODELS:
        metrics = json.loads((results / "eval" / model / "metrics.json").read_text())
        for key in ("accuracy", "balanced_accuracy", "roc_auc"):
            assert 0.0 <= metrics["test"][key] <= 1.0, (model, key, metrics["test"][key])
        for figure in ("confusion_matrix.png", "roc.png", "training_curves.png"):
            assert (results / "eval" / model / figure).stat().st_size > 1000
        predictions = pd.read_parquet(results / "eval" / model / "predictions.parquet")
        assert set(predictions.loc[predictions["split"] == "test", "id"]) <= set(
            split.loc[split["split"] == "test", "id"]
        )

    summary = pd.read_csv(results / "summary" / "models.csv")
    assert sorted(summary["model"]) == sorted(MODELS)
    assert (results / "summary" / "models.md").read_text().count("\n") >= len(MODELS) + 2
    for stage_stats in ("query/provenance.json", "labels/stats.json", "splits/audit.json",
                        "cutouts/stats.json"):
        assert json.loads((results / stage_stats).read_text())


@pytest.mark.workflow
def test_a_failed_shard_reruns_alone(finished_run: Path):
    """A shard whose job failed leaves no directory and no gathered manifest: only it reruns."""
    workdir = finished_run.parent
    cutouts = finished_run / "cutouts"
    before = {
        path: path.stat().st_mtime_ns
        for shard in ("000", "002")
        for path in (cutouts / "shards" / shard).rglob("*")
    }
    old_manifest = pd.read_parquet(cutouts / "manifest.parquet")
    # What a run whose shard 001 failed leaves: that shard's output removed by Snakemake, and
    # nothing downstream of it (gather, training, evaluation, summary) ever written.
    shutil.rmtree(cutouts / "shards" / "001")
    for name in ("manifest.parquet", "stats.json"):
        (cutouts / name).unlink()
    for downstream in ("models", "eval", "summary"):
        shutil.rmtree(finished_run / downstream)

    counts = job_counts(snakemake(workdir, "-n", "--cores", "2").stdout)
    assert counts["cutout"] == 1 and counts["gather_cutouts"] == 1
    assert not {"synthesize", "query", "label", "split", "plan_cutouts"} & set(counts)

    snakemake(workdir, "--cores", "2", str(cutouts.relative_to(workdir) / "manifest.parquet"))
    after = {path: path.stat().st_mtime_ns for path in before}
    assert after == before, "the shards that did not fail were rewritten"
    new_manifest = pd.read_parquet(cutouts / "manifest.parquet")
    pd.testing.assert_frame_equal(new_manifest, old_manifest)


def test_configfile_replaces_the_demo_config(tmp_path):
    """`--configfile` gives exactly its own models, never the demo's merged in."""
    own = tmp_path / "own.yaml"
    own.write_text(MINI.read_text().split("models:")[0] + "models:\n  only:\n    architecture: cnn2d\n")
    result = subprocess.run(
        [*SNAKEMAKE, "-n", "--configfile", str(own)],
        cwd=REPO, capture_output=True, text=True, check=True,
    )
    trained = {line.split("/")[2] for line in result.stdout.split() if line.startswith("results/models/")}
    assert trained == {"only"}


def test_microns_config_dry_run_needs_no_network(tmp_path):
    """The real-data DAG is planned offline: nothing reads a table or the network at parse time."""
    result = subprocess.run(
        [*SNAKEMAKE, "-n", "--configfile", str(REPO / "config" / "microns.yaml"),
         "--directory", str(tmp_path), "--snakefile", str(REPO / "Snakefile")],
        cwd=REPO, capture_output=True, text=True, check=True,
    )
    assert "synthesize" not in result.stdout
    counts = job_counts(result.stdout)
    assert counts["cutout"] == 256 and counts["train"] == 6 and counts["evaluate"] == 7
