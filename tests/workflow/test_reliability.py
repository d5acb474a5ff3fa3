"""Faults users meet in a run: a second run in the same directory, a planted CAVE token."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from paths import MINI, REPO
from snakemake_helpers import environment, run_snakemake, snakemake_command


@pytest.mark.workflow
def test_a_second_run_in_the_same_directory_is_refused_with_how_to_proceed(tmp_path: Path):
    """Raced while the first run has a job in flight, as users meet it, through the profile.

    Snakemake looks for incomplete outputs before it tries the lock, so without
    `rerun-incomplete` (which every profile sets) the in-flight job's outputs are reported as
    incomplete instead; the README says what that means.
    """
    profile = ["--profile", str(REPO / "profiles" / "local"), "--cores", "1"]
    first = subprocess.Popen(
        snakemake_command(tmp_path, *profile), cwd=tmp_path, env=environment(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        in_flight = tmp_path / ".snakemake" / "incomplete"
        deadline = time.monotonic() + 120
        while not (in_flight.is_dir() and any(in_flight.iterdir())):
            assert first.poll() is None, "the first run ended before it could be raced"
            assert time.monotonic() < deadline, "the first run never started a job"
            time.sleep(0.1)
        assert any((tmp_path / ".snakemake" / "locks").iterdir()), "a job runs without the lock"
        second = subprocess.run(
            snakemake_command(tmp_path, *profile), cwd=tmp_path, env=environment(),
            capture_output=True, text=True,
        )  # fmt: skip
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    message = second.stdout + second.stderr
    assert second.returncode != 0
    assert "Directory cannot be locked" in message and "--unlock" in message, message[-2000:]


@pytest.mark.workflow
def test_a_planted_cave_token_appears_in_no_file_the_run_wrote(tmp_path: Path):
    """The CAVE source fails here (no network) and must leave the token nowhere."""
    token = "planted-token-3f9a1c0e7b5d"  # noqa: S105 - a test secret, searched for below
    config = yaml.safe_load(MINI.read_text())
    config["dataset"] = {
        "source": "cave",
        "cave": {"datastack": "minnie65_public", "version": 1300, "retries": 0},
    }
    path = tmp_path / "cave.yaml"
    path.write_text(yaml.safe_dump(config))
    workdir = tmp_path / "run"
    workdir.mkdir()
    result = run_snakemake(workdir, "--cores", "1", configfile=path,
                           env=environment(CAVE_TOKEN=token), timeout=300, check=False)
    assert result.returncode != 0
    query_log = (workdir / "results" / "logs" / "query.log").read_text()
    assert "global.daf-apis.com" in query_log, query_log[-2000:]  # fails naming the server
    written = [path for path in workdir.rglob("*") if path.is_file()]
    assert any(path.parent.name == "runs" for path in written), "no run record was written"
    leaking = [str(path) for path in written if token.encode() in path.read_bytes()]
    assert not leaking
    assert token not in result.stdout + result.stderr
