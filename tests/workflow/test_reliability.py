"""Faults users meet: a second run in the same directory, a planted CAVE token, fuzzed inputs."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from paths import MINI, REPO
from snakemake_helpers import environment, run_snakemake, snakemake_command
from synapse_ei import tables as tables_module
from synapse_ei.config import check
from synapse_ei.errors import DataError
from synapse_ei.sources import files

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


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


# --- fuzzing the table reader and the config ------------------------------------------------

SYNAPSE_COLUMNS = ["id", "pre_pt_root_id", "post_pt_root_id",
                   "ctr_pt_position_x", "ctr_pt_position_y", "ctr_pt_position_z", "size"]  # fmt: skip
cell = st.one_of(
    st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=True), st.none(),
    st.text(max_size=6), st.just("864691135000000001"),
)  # fmt: skip


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(st.lists(cell, min_size=7, max_size=7), min_size=0, max_size=6),
    order=st.permutations(SYNAPSE_COLUMNS),
    drop=st.sampled_from([None, *SYNAPSE_COLUMNS]),
    duplicate_first=st.booleans(),
)
def test_any_synapse_export_loads_or_gives_a_data_error(tmp_path, rows, order, drop,
                                                        duplicate_first):
    frame = pd.DataFrame(rows, columns=SYNAPSE_COLUMNS)
    if duplicate_first and len(frame):
        frame = pd.concat([frame, frame.iloc[:1]], ignore_index=True)
    frame = frame[[column for column in order if column != drop]]
    synapses = tmp_path / "synapses.csv"
    frame.to_csv(synapses, index=False)
    cell_types = tmp_path / "cell_types.csv"
    cell_types.write_text("pt_root_id,cell_type\n864691135000000001,23P\n")
    try:
        tables = files.load(synapses, cell_types, em_path="not-read")
    except DataError as error:
        assert str(synapses) in str(error) or "synapse" in str(error).lower(), error
        return
    loaded = tables.synapses
    for column in ("id", "pre_pt_root_id", "post_pt_root_id"):
        assert loaded[column].dtype == "int64"
    assert loaded["id"].is_unique


# CAVE's packed points as CSV text: bracketed or not, three parts or not, numbers or not.
packed_cell = st.one_of(
    cell,
    st.builds(
        lambda template, parts: template.format(" ".join(map(str, parts))),
        st.sampled_from(["[{}]", "[ {} ]", "{}"]),
        st.lists(st.one_of(st.integers(-5, 10**6), st.floats(), st.text(max_size=3)), max_size=4),
    ),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(points=st.lists(packed_cell, min_size=1, max_size=6), separator=st.sampled_from([" ", ", ", "\n "]))
def test_any_packed_point_loads_or_names_its_row(tmp_path, points, separator):
    frame = pd.DataFrame({
        "id": range(len(points)), "pre_pt_root_id": 1, "post_pt_root_id": 2,
        "ctr_pt_position": [p.replace(" ", separator) if isinstance(p, str) else p for p in points],
    })  # fmt: skip
    synapses = tmp_path / "synapses.csv"
    frame.to_csv(synapses, index=False)
    cell_types = tmp_path / "cell_types.csv"
    cell_types.write_text("pt_root_id,cell_type\n1,23P\n")
    try:
        tables = files.load(synapses, cell_types, em_path="not-read")
    except DataError as error:
        assert str(synapses) in str(error) and "row" in str(error), error
        return
    assert list(tables.synapses["id"]) == list(range(len(points)))
    assert all(tables.synapses[column].dtype == "int64" for column in tables_module.CTR)


def config_paths(config, prefix=()):
    """Every key path of a nested config."""
    for key, value in config.items():
        yield (*prefix, key)
        if isinstance(value, dict):
            yield from config_paths(value, (*prefix, key))


MINI_CONFIG = yaml.safe_load(MINI.read_text())
PATHS = list(config_paths(MINI_CONFIG))
bad_value = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=False), st.text(max_size=5),
    st.lists(st.integers(-2, 2), max_size=4), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)  # fmt: skip


@settings(max_examples=80, deadline=None)
@given(path=st.sampled_from(PATHS), value=bad_value)
def test_any_config_edit_validates_or_names_the_key(path, value):
    config = yaml.safe_load(MINI.read_text())
    node = config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    try:
        validate(config, str(SCHEMA))
    except WorkflowError as error:
        assert path[-1] in str(error), (path, value, str(error)[-500:])
        return
    try:
        check(config)  # what the Snakefile checks next, before any job
    except DataError as error:
        assert path[-1] in str(error), (path, value, str(error))
