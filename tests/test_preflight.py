"""The preflight: each check passes on what a run needs and fails, offline and in seconds, with
what to do. CAVE through caveclient's own CAVEclientMock, the EM on local file:// volumes, Slurm
through stand-in commands on PATH."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import responses
from caveclient.endpoints import materialization_endpoints_v3
from caveclient.tools.testing import CAVEclientMock

from cave_helpers import DATASTACK, GLOBAL_SERVER, LOCAL_SERVER, VERSION, make_client
from paths import REPO
from synapse_ei import preflight
from synapse_ei.errors import DataError
from synapse_ei.sources import cave
from volume_helpers import make_volume

SYNAPSES, CELLS = "synapses_pni_2", "aibs_metamodel_celltypes_v661"
SETTINGS = {"datastack": DATASTACK, "version": VERSION, "server_address": GLOBAL_SERVER,
            "synapse_table": SYNAPSES, "cell_type_table": CELLS, "em_path": None}  # fmt: skip


# --- CAVE -------------------------------------------------------------------------------------


def _tables_answer(rsps: responses.RequestsMock, tables: list[str]) -> None:
    url = materialization_endpoints_v3["tables"].format_map(
        {"me_server_address": LOCAL_SERVER, "datastack_name": DATASTACK, "version": VERSION}
    )
    rsps.add(responses.GET, url, json=tables)


def test_cave_passes_with_the_token_the_version_and_both_tables():
    with responses.RequestsMock() as rsps:
        _tables_answer(rsps, [SYNAPSES, CELLS, "nucleus_detection_v0"])
        found = preflight.check_cave(SETTINGS, client=make_client())
    assert f"version {VERSION}" in found and SYNAPSES in found and CELLS in found


def test_a_table_missing_at_the_version_names_the_key_and_the_close_names():
    settings = {**SETTINGS, "cell_type_table": "aibs_metamodel_celltypes_v999"}
    with responses.RequestsMock() as rsps:
        _tables_answer(rsps, [SYNAPSES, CELLS])
        with pytest.raises(DataError) as raised:
            preflight.check_cave(settings, client=make_client())
    message = str(raised.value)
    assert message.startswith("dataset.cave.cell_type_table: 'aibs_metamodel_celltypes_v999'")
    assert f"similar: {CELLS}" in message and ".materialize.get_tables()" in message


def test_a_missing_token_says_how_to_set_one(monkeypatch, tmp_path):
    monkeypatch.delenv(cave.TOKEN_ENV_VAR, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.cloudvolume/secrets here
    start = time.perf_counter()
    with responses.RequestsMock(assert_all_requests_are_fired=False):  # nothing may be fetched
        with pytest.raises(DataError, match=cave.TOKEN_ENV_VAR):
            preflight.check_cave(SETTINGS)
    assert time.perf_counter() - start < 5


def test_a_version_the_datastack_lacks_says_to_set_another(monkeypatch):
    """The client is built by cave.connect, as the query builds it; the server behind it is
    caveclient's own mock, which knows versions VERSION - 1 and VERSION only."""
    import caveclient

    def mocked(datastack, server_address, auth_token, version, write_server_cache):
        return CAVEclientMock(
            materialization=True, available_materialization_versions=[VERSION - 1, VERSION],
            set_version=version,
        )  # fmt: skip

    monkeypatch.setattr(caveclient, "CAVEclient", mocked)
    monkeypatch.setenv(cave.TOKEN_ENV_VAR, "a-token")
    with pytest.raises(DataError, match="dataset.cave.version"):
        preflight.check_cave({**SETTINGS, "version": VERSION + 100})
    with responses.RequestsMock() as rsps:  # the version it has passes on to the tables
        _tables_answer(rsps, [SYNAPSES, CELLS])
        assert f"version {VERSION}" in preflight.check_cave(SETTINGS)


def test_a_datastack_the_server_lacks_is_named(monkeypatch):
    """The real CAVEclient behind cave.connect, its info service answering as caveclient's mock
    sets it up, but 404 for the datastack."""
    from caveclient import endpoints
    from caveclient.tools.testing import info_url, version_url

    monkeypatch.setenv(cave.TOKEN_ENV_VAR, "a-token")
    with responses.RequestsMock() as rsps:
        rsps.get(version_url(GLOBAL_SERVER, endpoints.infoservice_common, "i_server_address"),
                 json="4.0.0")  # fmt: skip
        rsps.get(info_url("minnie65_pubic", GLOBAL_SERVER), status=404,
                 json={"message": "datastack minnie65_pubic not found"})  # fmt: skip
        with pytest.raises(DataError) as raised:
            preflight.check_cave({**SETTINGS, "datastack": "minnie65_pubic"})
    message = str(raised.value)
    assert "datastack 'minnie65_pubic'" in message and "404" in message
    assert "Check the datastack" in message and "a-token" not in message


# --- the EM volume ----------------------------------------------------------------------------


def test_em_passes_on_a_readable_volume_and_reports_its_geometry(tmp_path):
    path, _, _ = make_volume(tmp_path, "em", with_mip1=False)
    found = preflight.check_em(path, 0)
    assert "uint8" in found and "8x8x40 nm" in found and "256x256x32 voxels" in found


def test_em_without_info_names_the_path(tmp_path):
    (tmp_path / "empty").mkdir()
    path = f"file://{tmp_path / 'empty'}"
    with pytest.raises(DataError, match=r"no readable 'info' file"):
        preflight.check_em(path, 0)


def test_em_unreadable_info_names_the_path(tmp_path):
    path, _, _ = make_volume(tmp_path, "em", with_mip1=False)
    (tmp_path / "em" / "info").write_text("{not json")
    with pytest.raises(DataError, match="EM volume"):
        preflight.check_em(path, 0)


def test_em_without_the_configured_mip_says_to_set_cutout_mip(tmp_path):
    path, _, _ = make_volume(tmp_path, "em", with_mip1=False)
    with pytest.raises(DataError, match="cutout.mip"):
        preflight.check_em(path, 3)


def test_the_em_path_is_the_one_the_run_reads():
    assert preflight.em_path_of({"source": "cave", "cave": {**SETTINGS, "datastack": "minnie65_public"}}) \
        == cave.MINNIE65_EM_PATH  # fmt: skip
    assert preflight.em_path_of({"source": "cave", "cave": {**SETTINGS, "em_path": "file:///x"}}) == "file:///x"
    assert preflight.em_path_of({"source": "files", "files": {"em_path": "file:///y"}}) == "file:///y"
    assert preflight.em_path_of({"source": "synthetic"}) is None


# --- Slurm ------------------------------------------------------------------------------------


def _commands(tmp_path: Path, monkeypatch, **scripts: str) -> Path:
    """Stand-ins for Slurm's commands, and no other Slurm command, on PATH (with `which`, which
    the Slurm plugin runs to look for them)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "which").symlink_to(shutil.which("which"))
    for name, body in scripts.items():
        script = bin_dir / name
        script.write_text(f"#!/bin/sh\n{body}\n")
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(bin_dir))
    return bin_dir
MIN_JOB_AGE = "echo 'MinJobAge               = {} sec'"


def test_slurm_passes_when_sacct_answers(tmp_path, monkeypatch):
    _commands(tmp_path, monkeypatch, sbatch="exit 0", sacct="exit 0")
    assert preflight.check_slurm_submit().endswith("sbatch")
    assert preflight.check_slurm_status({"executor": "slurm"}) == "sacct answers"


def test_a_failing_sacct_shows_its_error_and_says_to_poll_squeue(tmp_path, monkeypatch):
    _commands(tmp_path, monkeypatch, squeue="exit 0", scontrol=MIN_JOB_AGE.format(300),
              sacct='echo "Slurm accounting storage is disabled" >&2; exit 1')  # fmt: skip
    with pytest.raises(DataError) as raised:
        preflight.check_slurm_status({"executor": "slurm"})
    message = str(raised.value)
    assert message.startswith("sacct fails here (Slurm accounting storage is disabled)")
    assert "slurm-status-command: squeue" in message and "--slurm-no-account" in message
    # Done as it says, the profile polls squeue (MinJobAge 300 s outlasts 3 x 40 s).
    assert "squeue answers" in preflight.check_slurm_status({"slurm-status-command": "squeue"})


def test_without_sacct_the_plugin_polls_squeue_if_min_job_age_allows(tmp_path, monkeypatch):
    bin_dir = _commands(tmp_path, monkeypatch, squeue="exit 0", scontrol=MIN_JOB_AGE.format(300))
    assert preflight.check_slurm_status({}) == "squeue answers (MinJobAge 300 s)"
    (bin_dir / "scontrol").write_text("#!/bin/sh\n" + MIN_JOB_AGE.format(30) + "\n")
    with pytest.raises(DataError, match=r"MinJobAge is 30 s, not at least 3 x 40 s.*to 10 or less"):
        preflight.check_slurm_status({})
    # A shorter first check makes 30 s enough.
    fast = {"slurm-init-seconds-before-status-checks": 10}
    assert "squeue answers" in preflight.check_slurm_status(fast)


def test_a_profile_polling_squeue_falls_back_to_sacct_as_the_plugin_does(tmp_path, monkeypatch):
    """squeue with a MinJobAge too short for it: the plugin polls sacct, so sacct must work."""
    _commands(tmp_path, monkeypatch, squeue="exit 0", scontrol=MIN_JOB_AGE.format(30),
              sacct="echo 'sacct: error: Problem talking to the database' >&2; exit 1")  # fmt: skip
    with pytest.raises(DataError, match="sacct fails here"):
        preflight.check_slurm_status({"slurm-status-command": "squeue"})


def test_no_slurm_commands_say_to_run_on_the_login_node(tmp_path, monkeypatch):
    _commands(tmp_path, monkeypatch)
    with pytest.raises(DataError, match="login node"):
        preflight.check_slurm_submit()
    with pytest.raises(DataError, match="neither sacct nor squeue.*login node"):
        preflight.check_slurm_status({})


def test_a_hung_command_fails_in_seconds(tmp_path, monkeypatch):
    monkeypatch.setattr(preflight, "COMMAND_TIMEOUT_S", 1)
    _commands(tmp_path, monkeypatch, sacct=f"exec {shutil.which('sleep')} 30")
    start = time.perf_counter()
    with pytest.raises(DataError, match="did not answer within 1 s"):
        preflight.check_slurm_status({})
    assert time.perf_counter() - start < 10


# --- what runs for which config and profile ---------------------------------------------------


def test_the_shipped_configs_and_profiles_plan_the_checks_they_need():
    microns = preflight.load_config(REPO / "config" / "microns.yaml")
    _, slurm = preflight.load_profile(str(REPO / "profiles" / "slurm"))
    _, local = preflight.load_profile(str(REPO / "profiles" / "local"))
    names = [name for name, _ in preflight.checks(microns, slurm)]
    assert names == ["CAVE", "EM volume", "Slurm submission", "Slurm job status"]
    assert [name for name, _ in preflight.checks(microns, local)] == ["CAVE", "EM volume"]
    demo = preflight.load_config(REPO / "config" / "config.yaml")
    assert preflight.checks(demo, None) == []
    # A datastack whose EM the query finds at run time: said, not silently skipped.
    other = {**microns, "dataset": {"source": "cave", "cave": {**SETTINGS}}}
    (name, check), = [c for c in preflight.checks(other, None) if c[0] == "EM volume"]
    assert check().startswith("not checked") and "dataset.cave.em_path" in check()


def test_an_unknown_profile_says_how_to_name_one(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="make profiles"):
        preflight.load_profile("slurm")


def test_the_command_reports_every_failure_and_exits_non_zero(tmp_path):
    """`python -m synapse_ei.preflight`, as the README tells users to run it: with no token, no
    EM and no Slurm here, every check fails, each with its fix, in seconds."""
    config = (REPO / "config" / "microns.yaml").read_text().replace(
        "em_path: null", f"em_path: file://{tmp_path}/no-em"
    )
    configfile = tmp_path / "microns.yaml"
    configfile.write_text(config)
    environment = {key: value for key, value in os.environ.items() if key != cave.TOKEN_ENV_VAR}
    # No Slurm command on PATH, even where Slurm is installed (CI): only `which`, which the
    # Slurm plugin runs to look for them, and this Python.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "which").symlink_to(shutil.which("which"))
    environment.update(HOME=str(tmp_path), PATH=f"{bin_dir}:{Path(sys.executable).parent}")
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "synapse_ei.preflight", "--configfile", str(configfile),
         "--profile", str(REPO / "profiles" / "slurm")],
        capture_output=True, text=True, env=environment, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split("(")[0].strip() for line in lines] == [
        "FAIL  CAVE", "FAIL  EM volume", "FAIL  Slurm submission", "FAIL  Slurm job status"
    ], result.stdout
    assert cave.TOKEN_ENV_VAR in lines[0] and "no-em" in lines[1] and "login node" in lines[3]
    assert "4 check(s) failed" in result.stderr
    assert time.perf_counter() - start < 60


def test_before_cluster_run_passes_and_reports_what_it_found(tmp_path, monkeypatch):
    path, _, _ = make_volume(tmp_path, "em", with_mip1=False)
    _commands(tmp_path, monkeypatch, sbatch="exit 0", sacct="exit 0")
    config = {"dataset": {"source": "files", "files": {"em_path": path}}, "cutout": {"mip": 0}}
    outcomes = preflight.before_cluster_run(config)
    assert [(o.name, o.ok) for o in outcomes] == [
        ("EM volume", True), ("Slurm submission", True), ("Slurm job status", True)
    ]


def test_the_plugin_settings_from_the_command_line_are_the_ones_checked(tmp_path, monkeypatch):
    """`--slurm-status-command squeue` reaches the check through the plugin's settings."""

    class Settings:
        status_command = "squeue"
        init_seconds_before_status_checks = 5

    _commands(tmp_path, monkeypatch, sbatch="exit 0", squeue="exit 0",
              scontrol=MIN_JOB_AGE.format(20))  # fmt: skip
    outcomes = preflight.before_cluster_run({"dataset": {"source": "synthetic"}}, Settings())
    assert outcomes[-1].message == "squeue answers (MinJobAge 20 s)"
