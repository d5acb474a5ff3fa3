"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def realdata() -> Path:
    """The real MICrONS table exports beside the repo (never copied into it); skip if absent."""
    path = Path(__file__).resolve().parents[2] / "shared" / "realdata"
    if not path.is_dir():
        pytest.skip(f"real MICrONS tables not found at {path}")
    return path
