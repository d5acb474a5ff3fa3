"""Every profile gives every job that runs a network its GPU, CPUs and memory.

The rules that run a network are found from the workflow itself (their `device` param), not from
a list kept here, and each shipped config is planned through each profile with the leakage audit
and the prediction target on, so every such rule has jobs to check.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from paths import REPO
from snakemake_helpers import dry_run_jobs, network_rules, run_snakemake, workflow_rules

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
    result = run_snakemake(
        workdir, "-n", "--profile", str(REPO / "profiles" / profile),
        # A dry run caps threads at --cores as a local run would (a Slurm run does not), and
        # Hyak's conda needs a conda binary even to plan; neither touches the resources.
        "--cores", "64", "--software-deployment-method", "env-modules", "--",
        "all", target, configfile=configfile, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def reads_device(script: Path) -> bool:
    """Whether a rule's script hands the model its ``device`` param (a script shared with a
    table-only rule reads it with a default)."""
    pattern = r"snakemake\.params(\.device\b|\.get\(\"device\")"
    return re.search(pattern, script.read_text()) is not None


def test_the_network_marker_is_what_the_scripts_hand_the_model(tmp_path: Path):
    """A rule's `device` param is where its script runs the model; `use rule` variants inherit
    it, so a new variant of a network rule is marked without anyone listing it."""
    rules = workflow_rules(REPO / "config" / "microns.yaml", tmp_path)
    marked = network_rules(rules)
    assert {"train", "evaluate", "train_leaky", "evaluate_leaky", "predict_unlabelled"} <= marked
    assert not marked & {"train_connectivity", "evaluate_connectivity", "cutout", "gallery"}
    for name in marked:
        assert reads_device(rules[name]["script"]), name
    using_a_device = {
        rule["script"] for rule in rules.values()
        if rule["script"] is not None and reads_device(rule["script"])
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
            if profile not in CLUSTER_PROFILES:
                assert int(resources["mem_mb"]) >= 8000, (profile, rule, resources)
                continue
            # Declared for this very rule (set-resources replace, they never merge), and
            # Slurm's CPUs are the threads the script uses: per training process, one per GPU.
            assert job["threads"] == settings["set-threads"][rule], (profile, rule, job)
            assert job["threads"] >= 4, (profile, rule, job)
            processes = int(resources.get("gpu", 1)) if rule.startswith("train") else 1
            cpus = int(resources["cpus_per_task"])
            assert cpus == processes * job["threads"], (profile, rule, job)
            declared = settings["set-resources"][rule]
            if "mem_mb_per_cpu" in declared:  # --mem-per-cpu: grows with the CPUs
                memory = int(resources["mem_mb_per_cpu"]) * cpus
                assert resources["mem_mb_per_cpu"] == str(declared["mem_mb_per_cpu"])
            else:
                memory = int(resources["mem_mb"])
                assert resources["mem_mb"] == str(declared["mem_mb"]), (profile, rule, resources)
            assert memory >= 16000 * processes, (profile, rule, resources)
            assert resources["runtime"] == str(declared["runtime"]), (profile, rule)


# --- `snakemake --profile slurm`: the profiles installed under their names -------------------


def test_profiles_install_where_snakemake_looks_for_a_profile_name(tmp_path: Path):
    config_home = tmp_path / "config"
    environment = {**os.environ, "XDG_CONFIG_HOME": str(config_home)}
    environment["PATH"] = f"{Path(sys.executable).parent}:{environment['PATH']}"
    command = [
        sys.executable, "-m", "snakemake", "-n", "--profile", "slurm", "--cores", "64",
        "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
        "--configfile", str(REPO / "config" / "microns.yaml"),
    ]  # fmt: skip
    # From the repository, as a user types it: before `make profiles` the name is unknown...
    before = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=REPO)
    assert before.returncode != 0 and "no profile.yaml" in before.stderr, before.stderr[-2000:]

    install = [sys.executable, "-m", "synapse_ei.profiles"]
    installed = subprocess.run(install, capture_output=True, text=True, env=environment, cwd=REPO)
    assert installed.returncode == 0, installed.stderr
    for name in ("local", "slurm", "hyak"):
        link = config_home / "snakemake" / name
        assert link.is_symlink() and link.resolve() == REPO / "profiles" / name
    # ...after it, the name is profiles/slurm itself: its partition, and a GPU for the audit.
    after = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=REPO)
    assert after.returncode == 0, after.stderr[-3000:]
    jobs, groups = dry_run_jobs(after.stdout)
    assert groups == {"prepare"}
    for job in jobs["train_leaky"] + jobs["train"]:
        assert job["resources"]["gpu"] == "1" and job["resources"]["slurm_partition"] == "debug"

    # Installing again changes nothing; the Makefile's target is this command.
    again = subprocess.run(install, capture_output=True, text=True, env=environment, cwd=REPO)
    assert again.returncode == 0 and again.stdout.count("already installed") == 3, again.stdout
    make = subprocess.run(["make", "-n", "profiles"], capture_output=True, text=True, cwd=REPO)
    assert "-m synapse_ei.profiles" in make.stdout, make.stdout + make.stderr


def test_the_install_is_where_snakemake_computes_it(tmp_path: Path, monkeypatch):
    from snakemake.cli import get_profile_dir

    from synapse_ei.profiles import install, user_profile_dir

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert user_profile_dir() == tmp_path / "snakemake"
    install()
    found = get_profile_dir("hyak")
    assert found is not None and found[1].resolve() == REPO / "profiles" / "hyak" / "config.yaml"


def test_an_existing_profile_of_that_name_is_left_alone(tmp_path: Path):
    from synapse_ei.errors import DataError
    from synapse_ei.profiles import install

    theirs = tmp_path / "slurm"
    theirs.mkdir()
    (theirs / "config.yaml").write_text("executor: slurm\n")
    with pytest.raises(DataError) as raised:
        install(tmp_path)
    message = str(raised.value)
    assert f"{theirs} exists and is not a link" in message
    assert f"mv {theirs} {theirs}.old" in message and "make profiles" in message
    assert f"--profile {REPO / 'profiles' / 'slurm'}" in message
    # The other profiles went in; theirs is untouched.
    assert (tmp_path / "hyak").resolve() == REPO / "profiles" / "hyak"
    assert (theirs / "config.yaml").read_text() == "executor: slurm\n"
