"""The Slurm profiles: merged resources in a dry run, and the mini DAG through a real Slurm.

The real run needs a single-node Slurm started by tests/slurm/start_slurm.sh (root, Debian's
slurmctld/slurmd/munge: `.ci/run` installs them). Without them the test skips, except in CI
(`CI=true`), where a missing Slurm is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from paths import MINI, REPO
from snakemake_helpers import dry_run_jobs, job_counts, network_rules, run_snakemake, workflow_rules

START = REPO / "tests" / "slurm" / "start_slurm.sh"
MODELS = ["cnn2d", "r3d_18", "connectivity"]
PREPARE = {"synthesize", "query", "label", "split", "plan_cutouts"}
#: Rules the Snakefile runs where Snakemake runs (`localrules`), never as Slurm jobs.
LOCAL_RULES = {"gather_cutouts", "summary"}
SUBMITTED = re.compile(r"Job \S+ has been submitted with SLURM jobid (\d+)")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


# --- the profiles, merged with the workflow: no Slurm needed --------------------------------

EXPECTED_TRAIN = {
    "slurm": {"threads": 8, "gpu": "1", "mem_mb_per_cpu": "4000", "runtime": "720",
              "slurm_partition": "debug"},
    "hyak": {"threads": 6, "gpu": "1", "mem_mb_per_cpu": "8000", "runtime": "480",
             "slurm_partition": "ckpt-all", "slurm_account": "YOUR_ACCOUNT"},
}  # fmt: skip


@pytest.mark.parametrize("profile", ["slurm", "hyak"])
def test_dry_run_through_the_profile_merges_the_resources(profile: str, tmp_path: Path):
    args = ["-n", "--profile", str(REPO / "profiles" / profile)]
    # A dry run caps threads at --cores as a local run would (a real Slurm run does not), and
    # Hyak's conda needs a conda binary even to plan; neither touches the resources under test.
    args += ["--cores", "64", "--software-deployment-method", "env-modules"]
    result = run_snakemake(tmp_path, *args, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs, groups = dry_run_jobs(result.stdout)

    counts = {rule: len(found) for rule, found in jobs.items()}
    assert counts == {
        **{rule: 1 for rule in PREPARE},
        "cutout": 3, "gather_cutouts": 1, "train": 2, "train_connectivity": 1,
        "evaluate": 2, "evaluate_connectivity": 1, "gallery": 2, "neuroglancer_links": 3,
        "summary": 1, "all": 1,
    }  # fmt: skip
    assert groups == {"prepare"}

    expected = EXPECTED_TRAIN[profile]
    for train in jobs["train"]:
        assert train["threads"] == expected["threads"]
        resources = train["resources"]
        # Slurm gets --cpus-per-task from the threads: the two must agree.
        assert resources["cpus_per_task"] == str(expected["threads"])
        for key, value in expected.items():
            if key != "threads":
                assert resources[key] == value, (profile, key, resources)
    # Only the jobs that run a network ask for a GPU (tests/workflow/test_profiles.py checks that each
    # does); a shard is a small two-CPU job (one reads, one writes).
    network = network_rules(workflow_rules(MINI, tmp_path))
    for rule, found in jobs.items():
        if rule not in network:
            assert all("gpu" not in job["resources"] for job in found), rule
    for cutout in jobs["cutout"]:
        assert cutout["threads"] == 2 and cutout["resources"]["cpus_per_task"] == "2"
        assert int(cutout["resources"]["mem_mb"]) <= 8000


def test_a_command_line_set_resources_replaces_the_profile_list(tmp_path: Path):
    """Why the test run below rewrites the whole profile rather than adding one override."""
    args = ["-n", "--cores", "64", "--profile", str(REPO / "profiles" / "slurm")]
    result = run_snakemake(tmp_path, *args, "--set-resources", "cutout:mem_mb=1000", check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs, _ = dry_run_jobs(result.stdout)
    assert jobs["cutout"][0]["resources"]["mem_mb"] == "1000"
    assert "gpu" not in jobs["evaluate"][0]["resources"]  # the profile's, gone with its list


# --- a real single-node Slurm ---------------------------------------------------------------


@pytest.fixture(scope="session")
def slurm_cluster():
    """Start (or reuse) the test cluster; skip without Slurm or root, but fail in CI."""
    missing = [tool for tool in ("munged", "slurmctld", "slurmd", "sbatch") if not shutil.which(tool)]
    reason = None
    if missing:
        reason = f"Slurm not installed ({', '.join(missing)} missing): apt-get install slurmctld slurmd munge"
    elif os.geteuid() != 0:
        reason = "starting slurmctld/slurmd needs root"
    if reason:
        if in_ci():
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    state = os.environ.get("SYNAPSE_EI_SLURM_DIR", "/tmp/synapse-ei-slurm")
    started = subprocess.run(["bash", str(START), state], capture_output=True, text=True)
    assert started.returncode == 0, f"{START} failed:\n{started.stdout}\n{started.stderr}"
    conf = started.stdout.strip().splitlines()[-1].removeprefix("export SLURM_CONF=")
    # Left running: another pytest session may be using it; tests/slurm/stop_slurm.sh stops it.
    return {**os.environ, "SLURM_CONF": conf}


def profile_for_this_node(tmp_path: Path) -> Path:
    """profiles/slurm as it is, sized down to a 2-core test node and without the GPU.

    Rewritten whole because `set-resources` given anywhere else replaces the profile's list.
    """
    settings = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    cpus = os.cpu_count() or 1
    settings["set-threads"] = {rule: min(n, cpus) for rule, n in settings["set-threads"].items()}
    for resources in settings["set-resources"].values():
        for gpu_key in ("gpu", "gres", "gpu_model"):
            resources.pop(gpu_key, None)
        resources["mem_mb"] = min(int(resources.get("mem_mb", 2000)), 2000)
        if "mem_mb_per_cpu" in resources:  # train's memory grows with its CPUs
            resources["mem_mb_per_cpu"] = 2000 // settings["set-threads"]["train"]
    # The train rules ask for their model's `gpus` themselves: none on this node.
    for rule in ("train", "train_leaky"):
        settings["set-resources"].setdefault(rule, {})["gpu"] = 0
    settings["default-resources"]["mem_mb"] = 2000
    settings["retries"] = 0  # a failure here is a bug to see, not a flaky node
    profile = tmp_path / "profile"
    profile.mkdir()
    (profile / "config.yaml").write_text(yaml.safe_dump(settings))
    return profile


@pytest.mark.workflow
def test_mini_dag_runs_through_slurm(slurm_cluster: dict, tmp_path: Path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    profile = profile_for_this_node(tmp_path)
    result = run_snakemake(
        workdir,
        "--profile", str(profile),
        "--jobs", "4",
        # No slurmdbd here: poll squeue (the cluster keeps finished jobs for MinJobAge=3600 s).
        "--slurm-status-command", "squeue",
        "--slurm-init-seconds-before-status-checks", "1",
        "--seconds-between-status-checks", "1",
        "--slurm-no-account",
        "--latency-wait", "5",
        env={**slurm_cluster, "PATH": f"{Path(sys.executable).parent}:{slurm_cluster['PATH']}"},
        check=False,
    )  # fmt: skip
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-6000:] + _slurm_logs_tail(workdir)

    # Every job went through sbatch but the local rules (`all` and the light ones the Snakefile
    # lists in `localrules`), with the prepare chain as one grouped job.
    counts = job_counts(log)
    counts.pop("total")
    local = {"all", *LOCAL_RULES}
    expected = sum(n for rule, n in counts.items() if rule not in local | PREPARE) + 1
    job_ids = SUBMITTED.findall(log)
    assert len(job_ids) == expected, log[-4000:]
    states = subprocess.run(
        ["squeue", "--states=all", "--noheader", "--format=%i|%T"],
        capture_output=True, text=True, env=slurm_cluster, check=True,
    ).stdout  # fmt: skip
    state_of = dict(line.split("|") for line in states.split())
    assert {state_of.get(job) for job in job_ids} == {"COMPLETED"}
    slurm_logs = workdir / ".snakemake" / "slurm_logs"
    logged_rules = {path.name.removeprefix("rule_") for path in slurm_logs.iterdir()}
    assert {"cutout", "train", "evaluate"} <= logged_rules
    assert not logged_rules & local
    assert len(list(slurm_logs.rglob("*.log"))) == expected

    # The same files as a local run: a local dry run finds nothing left to do...
    again = run_snakemake(workdir, "-n", "--cores", "1", check=False)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout, again.stdout[-3000:]
    # ...and the results are of the same kind.
    results = workdir / "results"
    summary = pd.read_csv(results / "summary" / "models.csv")
    assert sorted(summary["model"]) == sorted(MODELS)
    for key in ("accuracy", "balanced_accuracy", "roc_auc"):
        assert summary[key].between(0.0, 1.0).all(), summary[key]
    split = pd.read_parquet(results / "splits" / "synapses.parquet")
    manifest = pd.read_parquet(results / "cutouts" / "manifest.parquet")
    assert len(manifest) > 0.9 * len(split)


def _slurm_logs_tail(workdir: Path) -> str:
    """The end of each Slurm job log, for a failure message."""
    logs = sorted((workdir / ".snakemake" / "slurm_logs").rglob("*.log"))
    return "".join(f"\n--- {path}\n{path.read_text()[-1500:]}" for path in logs)


def _numbers(resources: dict[str, str]) -> dict[str, object]:
    """A dry run's printed resources with the integers as integers, as the plugin gets them."""
    return {key: int(value) if value.isdigit() else value for key, value in resources.items()}


class _Resources(dict):
    __getattr__ = dict.__getitem__


@pytest.mark.parametrize("profile", ["slurm", "hyak"])
def test_a_multi_gpu_model_is_one_sbatch_task_with_its_gpus(profile: str, tmp_path: Path):
    """`gpus: 4` on a model: its train job gets --gpus=4, 4 times the profile's CPUs (one
    training process per GPU, each with the set-threads CPUs) and memory (per CPU), and one task
    (its script starts the 4 processes); the other model keeps one GPU and the profile's CPUs.
    The sbatch line is the one snakemake-executor-plugin-slurm builds from the planned job's
    resources."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    config = yaml.safe_load(MINI.read_text())
    config["models"]["cnn2d"]["gpus"] = 4
    configfile = tmp_path / "config.yaml"
    configfile.write_text(yaml.safe_dump(config))
    args = ["-n", "--profile", str(REPO / "profiles" / profile), "--cores", "64",
            "--software-deployment-method", "env-modules"]
    result = run_snakemake(tmp_path, *args, configfile=configfile, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs, _ = dry_run_jobs(result.stdout)
    assert sorted(job["resources"]["gpu"] for job in jobs["train"]) == ["1", "4"]
    train = next(job for job in jobs["train"] if job["resources"]["gpu"] == "4")
    resources = _numbers(train["resources"])
    job = SimpleNamespace(resources=_Resources(resources), threads=train["threads"])
    params = {"run_uuid": "run", "slurm_logfile": "log", "comment_str": "train",
              "account": "", "partition": "", "workdir": str(tmp_path)}
    sbatch = get_submit_command(job, params) + set_gres_string(job)  # as the plugin submits
    expected = EXPECTED_TRAIN[profile]
    assert " --gpus=4" in sbatch, sbatch
    assert f" --cpus-per-task={4 * expected['threads']}" in sbatch, sbatch
    assert f" --mem-per-cpu {expected['mem_mb_per_cpu']}" in sbatch, sbatch
    assert f" -t {expected['runtime']}" in sbatch, sbatch
    single = next(job for job in jobs["train"] if job["resources"]["gpu"] == "1")
    assert single["resources"]["cpus_per_task"] == str(expected["threads"])
    assert "--ntasks" not in sbatch, sbatch  # one task: srun -n1 runs the job's script once
