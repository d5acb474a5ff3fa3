"""The checks to run before a cluster run: each fails in seconds, saying what to do.

A run on Slurm queues for hours before its first real job; a missing CAVE token, a mistyped
table, an EM path cloud-volume cannot read or a cluster without ``sacct`` should not take that
long to show. Run, on the login node, from the repository::

    python -m synapse_ei.preflight --configfile config/microns.yaml --profile slurm

Each check is a function that returns what it found or raises :class:`DataError` with the fix.
The dataset checks follow ``dataset.source`` (none for ``synthetic``: the run makes its own
data); the cluster checks follow the profile's ``executor`` (none unless ``slurm``). The
Snakefile's ``onstart`` runs them too (:func:`before_cluster_run`) when a Slurm run starts on
real data, so a forgotten preflight still fails before any job queues.
"""

from __future__ import annotations

import argparse
import difflib
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from synapse_ei.config import SCHEMA, check, read_config_file
from synapse_ei.errors import DataError

REPO = Path(__file__).resolve().parents[1]
#: A cluster command that answers slower than this is reported as failing.
COMMAND_TIMEOUT_S = 15
#: The network retries of the CAVE check: one, with a 1 s pause, so a dead server shows fast.
CAVE_RETRIES = 1


@dataclass(frozen=True)
class Outcome:
    name: str
    ok: bool
    message: str
    seconds: float


# --- the dataset ------------------------------------------------------------------------------


def check_cave(settings: Mapping[str, Any], client: Any = None) -> str:
    """The token is found, the datastack and the pinned version exist (``cave.connect``, as the
    query builds its client), and both tables are materialized at that version."""
    from synapse_ei.sources import cave

    datastack, version = settings["datastack"], settings["version"]
    if client is None:
        client = cave.connect(
            datastack, version, settings.get("server_address"), retries=CAVE_RETRIES,
            backoff_seconds=1.0,
        )  # fmt: skip
    server = getattr(client, "server_address", settings.get("server_address"))
    token = getattr(getattr(client, "auth", None), "token", None)
    try:
        tables = set(client.materialize.get_tables(version=version))
    except Exception as error:  # a refused or failed request: say which and where
        raise DataError(
            f"CAVE server {server}, datastack {datastack!r}: listing the tables of version "
            f"{version} failed ({type(error).__name__}: {cave.scrub(str(error), token)[:300]}). "
            "Check the network and the server status, then rerun the preflight."
        ) from None
    for key in ("synapse_table", "cell_type_table"):
        table = settings[key]
        if table not in tables:
            close = difflib.get_close_matches(table, sorted(tables), n=8, cutoff=0.6)
            raise DataError(
                f"dataset.cave.{key}: {table!r} is not a table of datastack {datastack!r} at "
                f"version {version} ({len(tables)} tables there"
                + (f"; similar: {', '.join(close[:8])}" if close else "")
                + f"). List them with `CAVEclient({datastack!r}, version={version})"
                ".materialize.get_tables()` and set the key to one."
            )
    return (
        f"token found; datastack {datastack!r} at version {version}; tables "
        f"{settings['synapse_table']!r} and {settings['cell_type_table']!r} present"
    )


def em_path_of(dataset: Mapping[str, Any]) -> str | None:
    """The EM path the run will read, where the config (or the datastack's default) names it."""
    if dataset["source"] == "files":
        return dataset["files"]["em_path"]
    if dataset["source"] == "cave":
        from synapse_ei.sources import cave

        settings = dataset["cave"]
        return settings.get("em_path") or cave.DEFAULT_EM_PATHS.get(settings["datastack"])
    return None


def check_em(path: str, mip: int) -> str:
    """The EM volume's info is readable and has scale ``mip`` (what every cutout job opens)."""
    from synapse_ei.cutout.volume import open_volume, volume_info

    info = volume_info(open_volume(path, mip))
    return (
        f"{path} at mip {mip}: {info.dtype}, {info.encoding}, "
        f"{'x'.join(f'{value:g}' for value in info.resolution)} nm, "
        f"{'x'.join(str(value) for value in info.size)} voxels"
    )


# --- the cluster ------------------------------------------------------------------------------


def load_profile(profile: str) -> tuple[Path, dict[str, Any]]:
    """The profile's config file and settings, found as Snakemake finds ``--profile``."""
    from snakemake.cli import get_profile_dir

    found = get_profile_dir(profile)
    if found is None:
        raise DataError(
            f"--profile {profile}: no profile of that name or path (a directory with a "
            "config.yaml). Give the path (`--profile profiles/slurm`) or run `make profiles` "
            "so the name is found."
        )
    config_file = found[1]
    return config_file, yaml.safe_load(Path(config_file).read_text()) or {}


def _run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
    )


def check_slurm_submit() -> str:
    """``sbatch`` is there: jobs are submitted from a Slurm login node."""
    path = shutil.which("sbatch")
    if path is None:
        raise DataError(
            "sbatch is not on PATH: run Snakemake (and this check) on the cluster's login node, "
            "or load Slurm first (e.g. `module load slurm`)."
        )
    return path


def _answer(command: list[str], what: str, fix: str) -> None:
    """Run a Slurm query command; a failure or a hang is a DataError with ``fix``."""
    try:
        done = _run(command)
    except subprocess.TimeoutExpired:
        raise DataError(
            f"{command[0]} did not answer within {COMMAND_TIMEOUT_S} s: {what} is slow or down. "
            f"{fix}"
        ) from None
    if done.returncode != 0:
        raise DataError(f"{command[0]} fails here ({done.stderr.strip()[:300]}). {fix}")


def check_slurm_status(settings: Mapping[str, Any], status_command: str | None = None) -> str:
    """The command the Slurm plugin will poll job states with answers, chosen as the plugin
    (2.x) chooses it: ``slurm-status-command`` from the command line or the profile, else
    ``sacct`` where it exists; ``squeue`` only while MinJobAge outlasts three status-check
    intervals (the plugin turns to ``sacct`` otherwise), ``sacct`` only where it exists."""
    from snakemake_executor_plugin_slurm.job_status_query import get_min_job_age

    interval = int(settings.get("slurm-init-seconds-before-status-checks", 40))
    threshold = 3 * interval
    has_sacct = shutil.which("sacct") is not None
    chosen = status_command or settings.get("slurm-status-command") or (
        "sacct" if has_sacct else "squeue"
    )
    min_job_age = get_min_job_age() if chosen == "squeue" else None
    if chosen == "squeue" and has_sacct and (min_job_age is None or min_job_age < threshold):
        chosen = "sacct"
    if chosen == "sacct" and not has_sacct:
        chosen = "squeue"
        min_job_age = get_min_job_age()
    if chosen == "sacct":
        _answer(
            ["sacct", "--noheader", "--allocations", "--format=JobID"], "the accounting database",
            "A cluster without accounting (no slurmdbd) must poll squeue: add "
            "`slurm-status-command: squeue` and `slurm-no-account: true` to the profile (or pass "
            "`--slurm-status-command squeue --slurm-no-account`); the plugin keeps to squeue "
            f"only while MinJobAge is at least {threshold} s (`scontrol show config | grep "
            "MinJobAge`; profiles/README.md).",
        )  # fmt: skip
        return "sacct answers"
    if shutil.which("squeue") is None:
        raise DataError(
            "neither sacct nor squeue is on PATH, and the Slurm plugin polls one of them: run "
            "Snakemake (and this check) on the cluster's login node, or load Slurm first."
        )
    if min_job_age is None or min_job_age < threshold:
        age = "unknown (`scontrol show config` fails)" if min_job_age is None else f"{min_job_age} s"
        raise DataError(
            f"the plugin will poll squeue (no sacct here), but MinJobAge is {age}, not at least "
            f"3 x {interval} s: squeue may forget a finished job before it is asked. Ask the "
            f"admins for MinJobAge >= {threshold}, or lower "
            f"`slurm-init-seconds-before-status-checks` to {max((min_job_age or 0) // 3, 1)} or "
            "less in the profile."
        )
    _answer(
        ["squeue", "--noheader", "--me"], "slurmctld",
        "Check that `squeue --me` works here, then rerun.",
    )  # fmt: skip
    return f"squeue answers (MinJobAge {min_job_age} s)"


# --- all of them ------------------------------------------------------------------------------


def load_config(configfile: Path) -> dict[str, Any]:
    """The config as the workflow sees it: validated against the schema, defaults filled in."""
    from snakemake.utils import validate

    try:
        # A YAML mistake with its file and line, which Snakemake's own message lacks.
        config = read_config_file(configfile)
    except OSError as error:
        raise DataError(f"--configfile {configfile}: cannot be read ({error}).") from None
    try:
        validate(config, str(SCHEMA), set_default=True)
    except Exception as error:
        raise DataError(f"--configfile {configfile}: {error}") from None
    try:
        check(config)  # what the Snakefile checks next, before any job
    except DataError as error:
        raise DataError(f"--configfile {configfile}: {error}") from None
    return config


def checks(
    config: Mapping[str, Any],
    profile: Mapping[str, Any] | None,
    status_command: str | None = None,
) -> list[tuple[str, Callable[[], str]]]:
    """The checks that apply to this config and profile, in the order a run meets them."""
    planned: list[tuple[str, Callable[[], str]]] = []
    dataset = config["dataset"]
    if dataset["source"] == "cave":
        planned.append(("CAVE", lambda: check_cave(dataset["cave"])))
    em_path = em_path_of(dataset)
    if em_path is not None:
        planned.append(("EM volume", lambda: check_em(em_path, config["cutout"]["mip"])))
    elif dataset["source"] == "cave":
        planned.append(("EM volume", lambda: (
            "not checked: the query reads the path from the datastack's image source; set "
            "dataset.cave.em_path to check it here"
        )))  # fmt: skip
    if profile is not None and profile.get("executor") == "slurm":
        planned.append(("Slurm submission", check_slurm_submit))
        planned.append(("Slurm job status", lambda: check_slurm_status(profile, status_command)))
    return planned


def run_checks(planned: list[tuple[str, Callable[[], str]]]) -> list[Outcome]:
    """Run every check (one failing does not hide the next) and time each."""
    outcomes = []
    for name, check in planned:
        start = time.perf_counter()
        try:
            message, ok = check(), True
        except DataError as error:
            message, ok = str(error), False
        outcomes.append(Outcome(name, ok, message, time.perf_counter() - start))
    return outcomes


def before_cluster_run(config: Mapping[str, Any], executor_settings: Any = None) -> list[Outcome]:
    """The checks of a Slurm run, from the Snakefile's ``onstart`` (before the first job is
    submitted): raises :class:`DataError` listing every failure. ``executor_settings`` are the
    Slurm plugin's (``--slurm-status-command`` and its first-check interval)."""
    slurm: dict[str, Any] = {"executor": "slurm"}
    for key, attribute in (("slurm-status-command", "status_command"),
                           ("slurm-init-seconds-before-status-checks",
                            "init_seconds_before_status_checks")):  # fmt: skip
        value = getattr(executor_settings, attribute, None)
        if value is not None:
            slurm[key] = value
    outcomes = run_checks(checks(config, slurm))
    failed = [outcome for outcome in outcomes if not outcome.ok]
    if failed:
        raise DataError(
            "preflight: no job was submitted, because\n"
            + "\n".join(f"- {outcome.name}: {outcome.message}" for outcome in failed)
            + "\n`python -m synapse_ei.preflight --configfile ... --profile ...` reruns the checks."
        )
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m synapse_ei.preflight",
        description="Check, in seconds, what a cluster run needs before submitting any job.",
    )
    parser.add_argument("--configfile", type=Path, default=REPO / "config" / "config.yaml")
    parser.add_argument("--profile", help="as given to snakemake: a name (`slurm`) or a path")
    parser.add_argument("--slurm-status-command", choices=["sacct", "squeue"], default=None,
                        help="as given to snakemake, if you give it there")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.configfile)
        profile = load_profile(args.profile)[1] if args.profile else None
    except DataError as error:
        print(f"FAIL  {error}", file=sys.stderr)
        return 1
    planned = checks(config, profile, args.slurm_status_command)
    if not planned:
        print("Nothing to check: the synthetic source needs no account, and no Slurm profile given.")
        return 0
    outcomes = run_checks(planned)
    for outcome in outcomes:
        mark = "ok  " if outcome.ok else "FAIL"
        print(f"{mark}  {outcome.name} ({outcome.seconds:.1f} s): {outcome.message}")
    failed = [outcome.name for outcome in outcomes if not outcome.ok]
    if failed:
        print(f"{len(failed)} check(s) failed: {', '.join(failed)}. Fix them, then rerun this.",
              file=sys.stderr)
        return 1
    print("All checks passed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
