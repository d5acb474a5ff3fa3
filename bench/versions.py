"""Another version of one of the package's modules, imported beside this tree's, for the
benchmarks that time the two side by side in one process (bench/query.py, bench/augment.py,
bench/train_gpu.py). The other version imports the rest of the package from this tree."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_from_source(text: str, name: str, origin: str) -> types.ModuleType:
    """The Python source ``text`` run as a new module ``name`` (``origin`` names it in
    tracebacks)."""
    module = types.ModuleType(name)
    module.__file__ = origin
    sys.modules[name] = module  # dataclasses look their module up there
    exec(compile(text, origin, "exec"), module.__dict__)
    return module


def module_at(commit: str, path: str, name: str) -> types.ModuleType:
    """The repository's file ``path`` as it was at git ``commit``, as the module ``name``."""
    text = subprocess.check_output(["git", "-C", str(ROOT), "show", f"{commit}:{path}"],
                                   text=True)
    return module_from_source(text, name, f"{commit}:{path}")


def module_from_file(path: Path, name: str) -> types.ModuleType:
    """The Python file ``path`` (e.g. a ``git show`` written where there is no repository, as
    on a lent GPU machine) as the module ``name``."""
    return module_from_source(Path(path).read_text(encoding="utf-8"), name, str(path))
