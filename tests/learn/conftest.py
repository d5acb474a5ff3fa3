"""Fixtures of the learn tests: a tiny learnable dataset, and one finished training run."""

from __future__ import annotations

import pytest

from training_helpers import run, write_learnable_cutouts


@pytest.fixture(scope="module")
def cutouts(tmp_path_factory):
    root = tmp_path_factory.mktemp("cutouts")
    return root, write_learnable_cutouts(root)


@pytest.fixture(scope="module")
def uninterrupted(cutouts, tmp_path_factory):
    work = tmp_path_factory.mktemp("uninterrupted")
    return work, run(cutouts, work)
