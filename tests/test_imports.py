"""The import rule: table-only stages load neither torch nor cloud-volume, and imports run one way.

Each check imports the modules in a fresh interpreter, so what another test imported first
cannot hide a heavy import.
"""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys

import pytest

from paths import REPO
from synapse_ei import curation

#: The image and volume libraries a table-only stage must not load.
HEAVY = ("torch", "torchvision", "cloudvolume", "tensorstore")

#: Every module of curation/ (labels, splits, sampling and any added later).
CURATION = tuple(
    f"synapse_ei.curation.{module.name}" for module in pkgutil.iter_modules(curation.__path__)
)

#: Stages that read and write tables only: sources of tables, curation, the evaluation metrics,
#: the connectivity model, the leakage audit, the summary, and what they share.
TABLE_ONLY = (
    "synapse_ei.config",
    "synapse_ei.tables",
    "synapse_ei.errors",
    "synapse_ei.logs",
    "synapse_ei.outputs",
    "synapse_ei.provenance",
    "synapse_ei.sources",
    "synapse_ei.sources.files",
    *CURATION,
    "synapse_ei.evaluation.metrics",
    "synapse_ei.evaluation.bootstrap",
    "synapse_ei.evaluation.neurons",
    "synapse_ei.evaluation.figures",
    "synapse_ei.evaluation.evaluate",
    "synapse_ei.connectivity",
    "synapse_ei.reporting.leakage",
    "synapse_ei.reporting.summary",
    # Planning the cutouts is table work; only cutting them reads the volume.
    "synapse_ei.cutout.geometry",
    "synapse_ei.cutout.plan",
    "synapse_ei.cutout.gather",
)


def loaded_after(modules: list[str], watched: tuple[str, ...]) -> list[str]:
    """Which of ``watched`` a fresh interpreter has loaded after importing ``modules``."""
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(','.join(m for m in {watched!r} if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, check=True)
    return [name for name in result.stdout.strip().split(",") if name]


@pytest.mark.parametrize("module", TABLE_ONLY)
def test_a_table_only_stage_loads_neither_torch_nor_cloud_volume(module):
    assert loaded_after([module], HEAVY) == []


def test_every_curation_module_is_checked():
    assert {"synapse_ei.curation.labels", "synapse_ei.curation.sampling",
            "synapse_ei.curation.splits"} <= set(CURATION)


def test_all_table_only_stages_together_load_neither():
    assert loaded_after(list(TABLE_ONLY), HEAVY) == []


def test_the_stack_reader_and_the_data_loader_do_not_load_cloud_volume():
    # The loader memory-maps TIFF stacks: that needs tifffile and numpy, not the volume readers.
    modules = ["synapse_ei.cutout.stacks", "synapse_ei.cutout.manifest"]
    assert loaded_after(modules, HEAVY) == []
    assert loaded_after(["synapse_ei.learn.dataset"], ("cloudvolume", "tensorstore")) == []


def test_inference_does_not_import_training():
    watched = ("synapse_ei.learn.train",)
    assert loaded_after(["synapse_ei.learn.inference"], watched) == []


def private_imports() -> set[tuple[str, str, str]]:
    """``(file, module, name)`` for each ``from synapse_ei.x import _name`` in the package."""
    found = set()
    for path in sorted((REPO / "synapse_ei").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("synapse_ei"):
                found |= {(path.relative_to(REPO).as_posix(), node.module, alias.name)
                          for alias in node.names if alias.name.startswith("_")}
    return found


def test_no_private_name_is_imported_across_modules():
    # A name another module needs is an interface: public, documented, where it belongs.
    assert private_imports() == set()
