"""Every profile gives every job that runs a network its GPU, CPUs and memory.

The rules that run a network are found from the workflow itself (their `device` param), not from
a list kept here, and each shipped config is planned through each profile with the leakage audit
and the prediction target on, so every such rule has jobs to check.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from snakemake_helpers import REPO, dry_run_jobs, network_rules, workflow_rules

PROFILES = ["local", "slurm", "hyak"]
CLUSTER_PROFILES = {"slurm", "hyak"}
CONFIGS = ["config.yaml", "microns.yaml"]
GPU_KEYS = ("gpu", "gres", "gpu_model")


def audited_config(name: str, tmp_path: Path) -> tuple[Path, str]:
    """The shipped config with the leakage audit on, and the prediction target of its first
    image model."""
    config = yaml.safe_load((REPO / "config" / name).read_text())
    config["leakage_audit"]["enabled"] = True
    image = next(m for m, s in config["models"].items() if s["architecture"] != "connectivity")
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path, f"results/predict/{image}/neurons.csv"


def dry_run(profile: str, configfile: Path, target: str, workdir: Path) -> str:
    command = [
        sys.executable, "-m", "snakemake", "-n",
        "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
        "--profile", str(REPO / "profiles" / profile), "--configfile", str(configfile),
        # A dry run caps threads at --cores as a local run would (a Slurm run does not), and
        # Hyak's conda needs a conda binary even to plan; neither touches the resources.
        "--cores", "64", "--software-deployment-method", "env-modules", "--",
        "all", target,
    ]  # fmt: skip
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_the_network_marker_is_what_the_scripts_hand_the_model(tmp_path: Path):
    """A rule's `device` param is where its script runs the model; `use rule` variants inherit
    it, so a new variant of a network rule is marked without anyone listing it."""
    rules = workflow_rules(REPO / "config" / "microns.yaml", tmp_path)
    marked = network_rules(rules)
    assert {"train", "evaluate", "train_leaky", "evaluate_leaky", "predict_unlabelled"} <= marked
    assert not marked & {"train_connectivity", "evaluate_connectivity", "cutout", "gallery"}
    for name in marked:
        assert "snakemake.params.device" in rules[name]["script"].read_text(), name
    using_a_device = {
        rule["script"] for rule in rules.values()
        if rule["script"] is not None and "snakemake.params.device" in rule["script"].read_text()
    }  # fmt: skip
    assert using_a_device == {rules[name]["script"] for name in marked}


@pytest.mark.parametrize("config_name", CONFIGS)
@pytest.mark.parametrize("profile", PROFILES)
def test_every_network_job_gets_a_gpu_threads_and_memory(
    profile: str, config_name: str, tmp_path: Path
):
    configfile, target = audited_config(config_name, tmp_path)
    workdir = tmp_path / "run"
    workdir.mkdir()
    network = network_rules(workflow_rules(configfile, workdir))
    jobs, _ = dry_run_jobs(dry_run(profile, configfile, target, workdir))
    settings = yaml.safe_load((REPO / "profiles" / profile / "config.yaml").read_text())

    # The audit and the prediction target bring every network rule into the plan.
    assert network <= set(jobs), f"no jobs planned for {sorted(network - set(jobs))}"
    for rule, found in jobs.items():
        for job in found:
            resources = job["resources"]
            gpus = [key for key in GPU_KEYS if key in resources]
            if rule not in network:
                assert not gpus, f"{profile}: {rule} asks for a GPU it does not use: {resources}"
                continue
            assert gpus, f"{profile}/{config_name}: {rule} runs a network without a GPU: {resources}"
            assert int(resources["mem_mb"]) >= 8000, (profile, rule, resources)
            if profile in CLUSTER_PROFILES:
                # Declared for this very rule (set-resources replace, they never merge), and
                # Slurm's CPUs equal the threads the script uses.
                assert job["threads"] == settings["set-threads"][rule], (profile, rule, job)
                assert resources["cpus_per_task"] == str(job["threads"]), (profile, rule, job)
                assert job["threads"] >= 4, (profile, rule, job)
                declared = settings["set-resources"][rule]
                assert resources["mem_mb"] == str(declared["mem_mb"]), (profile, rule, resources)
                assert int(resources["mem_mb"]) >= 16000, (profile, rule, resources)
                assert resources["runtime"] == str(declared["runtime"]), (profile, rule)
