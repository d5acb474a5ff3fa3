"""The configuration beyond its schema: YAML mistakes with their file and line, and the checks
that tie keys together, also through ``python -m synapse_ei.preflight --configfile``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from paths import MINI
from synapse_ei.config import check, check_split_fractions, read_config_file
from synapse_ei.errors import DataError



def with_tab(tmp_path: Path) -> Path:
    """The mini config with one line indented by a tab, as an editor might leave it."""
    lines = MINI.read_text().splitlines(keepends=True)
    row = next(i for i, line in enumerate(lines) if line.startswith("    seed: 3"))
    lines[row] = "\t" + lines[row].lstrip()
    bad = tmp_path / "bad.yaml"
    bad.write_text("".join(lines))
    return bad, row + 1


def test_a_tab_in_yaml_names_the_file_the_line_and_the_fix(tmp_path):
    bad, line = with_tab(tmp_path)
    with pytest.raises(DataError) as error:
        read_config_file(bad)
    said = str(error.value)
    assert f"{bad}, line {line}, column 1" in said
    assert "tabs for indentation" in said and "\\tseed: 3" in said
    # Doing what it says gives the intended config.
    bad.write_text(bad.read_text().replace("\tseed: 3", "    seed: 3"))
    assert read_config_file(bad) == yaml.safe_load(MINI.read_text())


def test_other_yaml_mistakes_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: 1\ndataset: {source: synthetic\nlabels: {}\n")
    with pytest.raises(DataError, match=rf"{bad}, line \d+, column \d+: not valid YAML"):
        read_config_file(bad)
    bad.write_text("- a list\n- not a map\n")
    with pytest.raises(DataError, match="is a map of keys"):
        read_config_file(bad)


@pytest.mark.parametrize(
    "fractions", [{"train": 0.7, "val": 0.2, "test": 0.2}, {"train": 0.5, "val": 0.2, "test": 0.2}]
)
def test_fractions_that_do_not_sum_to_one_name_the_keys(fractions):
    config = yaml.safe_load(MINI.read_text())
    config["split"]["fractions"] = fractions
    with pytest.raises(DataError, match=r"split\.fractions.*not 1.*split\.fractions\.train"):
        check(config)
    assert check_split_fractions({"train": 0.6, "val": 0.3, "test": 0.1}) == {
        "train": 0.6, "val": 0.3, "test": 0.1
    }


@pytest.mark.parametrize("mistake", ["tab", "fractions", "typo"])
def test_the_preflight_checks_a_config_file_as_the_workflow_would(tmp_path, mistake):
    """`python -m synapse_ei.preflight --configfile`, for what Snakemake reads before the
    workflow and reports without file or line; the demo's source needs no other check."""
    if mistake == "tab":
        bad, line = with_tab(tmp_path)
        expected = f"{bad}, line {line}, column 1: not valid YAML"
    else:
        bad = tmp_path / "bad.yaml"
        old, new = {"fractions": ("train: 0.6", "train: 0.7"),
                    "typo": ("source: synthetic", "source: synthetc")}[mistake]  # fmt: skip
        bad.write_text(MINI.read_text().replace(old, new))
        expected = {"fractions": f"--configfile {bad}: split.fractions: ",
                    "typo": "'synthetc' is not one of"}[mistake]  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "synapse_ei.preflight", "--configfile", str(bad)],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert result.returncode == 1 and result.stderr.startswith("FAIL  ")
    assert expected in result.stderr
    fine = subprocess.run(
        [sys.executable, "-m", "synapse_ei.preflight", "--configfile", str(MINI)],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert fine.returncode == 0 and "Nothing to check" in fine.stdout
