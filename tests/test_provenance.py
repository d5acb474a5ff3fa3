"""The run record: what ran, with which packages, code and config, and how it ended."""

from __future__ import annotations

import json
from importlib import metadata

from paths import REPO
from synapse_ei.outputs import write_json
from synapse_ei.provenance import (
    finish_run_record,
    git_state,
    package_versions,
    PACKAGES,
    start_run_record,
)


def test_package_versions_are_the_installed_ones_and_none_for_a_missing_one():
    versions = package_versions(["numpy", "no-such-distribution-synapse-ei"])
    assert versions == {"numpy": metadata.version("numpy"), "no-such-distribution-synapse-ei": None}


def test_git_state_outside_a_checkout_has_no_commit(tmp_path):
    assert git_state(tmp_path) == {"commit": None, "dirty": None}


def test_a_run_record_starts_running_and_finishes_with_the_dataset_provenance(tmp_path):
    config = {"models": {"cnn2d": {"epochs": (1, 2)}}}
    path = start_run_record(tmp_path / "results", config, REPO)
    assert path.parent == tmp_path / "results" / "runs"
    started = json.loads(path.read_text())
    assert started["status"] == "running" and started["finished"] is None
    assert started["config"] == {"models": {"cnn2d": {"epochs": [1, 2]}}}  # plain values
    assert set(started["packages"]) >= {"synapse-ei", "snakemake", "torch"}
    write_json(tmp_path / "provenance.json", {"source": "synthetic"})
    finish_run_record(path, True, tmp_path / "provenance.json")
    finished = json.loads(path.read_text())
    assert finished["status"] == "succeeded" and finished["finished"] is not None
    assert finished["dataset"] == {"source": "synthetic"}
    finish_run_record(path, False, tmp_path / "missing.json")
    failed = json.loads(path.read_text())
    assert failed["status"] == "failed" and failed["dataset"] is None


def test_every_package_the_run_record_names_is_one_the_project_installs():
    # A name left over from a dropped dependency would be recorded as null in every run.
    for name in PACKAGES:
        assert metadata.version(name), name
