"""Where the tests find the repository and the data shared beside it: one place for both."""

from __future__ import annotations

from pathlib import Path

#: The repository root (this file is tests/paths.py).
REPO = Path(__file__).resolve().parents[1]
#: The folder beside the repository that holds data no test copies into it.
SHARED = REPO.parent / "shared"
#: The mini workflow config most workflow tests run.
MINI = REPO / "tests" / "config" / "mini.yaml"
