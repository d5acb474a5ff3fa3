"""Shared fixtures: the real MICrONS tables, and the EM volumes of the cutout and dataset tests.

The helper modules beside this file (``paths``, ``cave_helpers``, ``volume_helpers``,
``cutout_helpers``, ``snakemake_helpers``) import from every test folder: pyproject.toml puts
``tests/`` on the path."""

from __future__ import annotations

from pathlib import Path

import pytest

from cutout_helpers import holey_volume, jpeg_volume, raw_volume  # noqa: F401 (fixtures)
from paths import SHARED


@pytest.fixture(scope="session")
def realdata() -> Path:
    """The real MICrONS table exports beside the repo (never copied into it); skip if absent."""
    path = SHARED / "realdata"
    if not path.is_dir():
        pytest.skip(f"real MICrONS tables not found at {path}")
    return path
