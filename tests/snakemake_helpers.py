"""Running Snakemake on the repository's workflow, and reading what it prints, for the workflow,
Slurm, profile and reliability tests: the one Snakemake runner of the test suite."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from paths import MINI, REPO

SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def environment(**extra: str) -> dict[str, str]:
    """This environment with this Python's bin first on PATH (the scripts' ``python``), and
    ``extra`` set."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **extra}


def snakemake_command(
    workdir: Path | None, *args: str, configfile: Path | None = MINI
) -> list[str]:
    """Snakemake on the repo's Snakefile in ``workdir`` with ``configfile``, then ``args``.

    Without ``workdir``: Snakemake as a user types it, finding the Snakefile in its working
    directory; without ``configfile``: the workflow's own (``config/config.yaml``)."""
    command = [*SNAKEMAKE]
    if workdir is not None:
        command += ["--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir)]
    if configfile is not None:
        command += ["--configfile", str(configfile)]
    return [*command, *args]


def run_snakemake(
    workdir: Path | None, *args: str, configfile: Path | None = MINI, check: bool = True,
    env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float | None = None,
) -> subprocess.CompletedProcess:
    """Run :func:`snakemake_command` in ``cwd`` (default ``workdir``, else the repo), its output
    captured; with ``check``, a failure raises with the end of what it printed."""
    result = subprocess.run(
        snakemake_command(workdir, *args, configfile=configfile), capture_output=True, text=True,
        env=environment() if env is None else env, cwd=cwd or workdir or REPO, timeout=timeout,
    )  # fmt: skip
    if check and result.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n"
            f"{result.stderr[-8000:]}"
        )
    return result


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


def dry_run_jobs(output: str) -> tuple[dict[str, list[dict]], set[str]]:
    """Each rule's jobs in a dry run's printout (threads and resources), and the group names."""
    jobs: dict[str, list[dict]] = {}
    groups = set(re.findall(r"Group job (\S+) \(", output))
    current: dict | None = None
    for line in output.splitlines():
        header = re.match(r"\s*(?:local)?rule (\w+):$", line)
        if header:
            current = {"threads": 1, "resources": {}}
            jobs.setdefault(header.group(1), []).append(current)
        elif current is not None and line.strip().startswith("threads:"):
            current["threads"] = int(line.split(":", 1)[1])
        elif current is not None and line.strip().startswith("resources:"):
            pairs = line.split(":", 1)[1].split(", ")
            current["resources"] = dict(pair.strip().split("=", 1) for pair in pairs)
    return jobs, groups


# Loads the workflow through Snakemake's API, in a child process (the API changes directory and
# sets up logging), and prints each rule's params and script.
_RULES_PROGRAM = """
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, OutputSettings, Quietness, ResourceSettings

snakefile, configfile, workdir = sys.argv[1:]
with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
    workflow = api.workflow(
        resource_settings=ResourceSettings(),
        config_settings=ConfigSettings(configfiles=[Path(configfile)]),
        snakefile=Path(snakefile),
        workdir=Path(workdir),
    )._workflow
    rules = {
        rule.name: {"params": sorted(rule.params.keys()), "script": rule.script,
                    "conda": None if rule.conda_env is None else str(rule.conda_env),
                    "basedir": str(rule.basedir)}
        for rule in workflow.rules
    }
print("RULES=" + json.dumps(rules))
"""


def workflow_rules(configfile: Path, workdir: Path) -> dict[str, dict]:
    """Every rule of the workflow under ``configfile``: its param names, and the paths of its script
    and its conda env file (None where it has none)."""
    result = subprocess.run(
        [sys.executable, "-c", _RULES_PROGRAM, str(REPO / "Snakefile"), str(configfile),
         str(workdir)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("RULES="))
    rules = json.loads(line.removeprefix("RULES="))
    for rule in rules.values():
        basedir = Path(rule.pop("basedir"))
        for key in ("script", "conda"):
            if rule[key] is not None:
                rule[key] = (basedir / rule[key]).resolve()
    return rules


def network_rules(rules: dict[str, dict]) -> set[str]:
    """The rules that run a network: the workflow marks them with a `device` param (where the
    model runs), which their scripts pass on to the package."""
    return {name for name, rule in rules.items() if "device" in rule["params"]}
