"""The conda environment of every rule installs everything its script imports.

`snakemake --sdm conda` (as profiles/hyak runs) builds each rule's `conda:` env file and runs the
script in it, so a module the script reaches that the env does not install fails the job on the
cluster. The imports are collected from the rule's script and every package module it reaches
(function-level imports too: the cave source imports caveclient only when it queries).
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from paths import REPO
from snakemake_helpers import workflow_rules

PACKAGE = "synapse_ei"


def _module_file(name: str) -> Path | None:
    """The source file of package module ``name`` (a dotted name), or None if it is not one."""
    base = REPO.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path, module: str | None) -> set[str]:
    """Every module ``path`` imports (dotted names), wherever in the file the import is."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = module if path.name == "__init__.py" else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = ".".join(part for part in (package, node.module) if part)
            else:
                base = node.module
            found.add(base)
            # `from package import module` imports a module too.
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def third_party_imports(script: Path) -> dict[str, str]:
    """{top-level module: a file importing it} for ``script`` and the package modules it reaches."""
    outside: dict[str, str] = {}
    todo = [(script, None)]
    seen: set[Path] = set()
    while todo:
        path, module = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _imports(path, module):
            top = name.split(".")[0]
            if top == PACKAGE:
                parts = name.split(".")
                # Importing a.b.c runs a/__init__, a/b/__init__ and a/b/c.
                for end in range(1, len(parts) + 1):
                    dotted = ".".join(parts[:end])
                    file = _module_file(dotted)
                    if file is not None:
                        todo.append((file, dotted))
            elif top not in sys.stdlib_module_names and top != "__future__":
                outside.setdefault(top, str(path.relative_to(REPO)))
    return outside


def installed_by(env_file: Path) -> tuple[set[str], list[str]]:
    """The distributions (canonical names) the env file installs, with everything they require,
    and the extras of the project it installs."""
    env = yaml.safe_load(env_file.read_text())
    pip = next(entry["pip"] for entry in env["dependencies"] if isinstance(entry, dict))
    project = [line for line in pip if re.match(r"(-e\s+)?\.\.?(/|\[|$)", line.strip())]
    assert len(project) == 1, f"{env_file}: expected one pip entry installing the project: {pip}"
    match = re.match(r"(?:-e\s+)?(?P<path>[^\[\s]+)(?:\[(?P<extras>[^\]]*)\])?", project[0].strip())
    pyproject = (env_file.parent / match["path"] / "pyproject.toml").resolve()
    assert pyproject == REPO / "pyproject.toml", pyproject
    extras = [extra.strip() for extra in (match["extras"] or "").split(",") if extra.strip()]
    settings = tomllib.loads(pyproject.read_text())["project"]
    wanted = list(settings["dependencies"])
    for extra in extras:
        wanted += settings["optional-dependencies"][extra]
    wanted += [line for line in pip if line not in project]
    return _with_requirements(wanted), extras


def _with_requirements(requirements: list[str]) -> set[str]:
    """These requirements and, from the installed distributions' metadata, all they require."""
    names: set[str] = set()
    todo = [Requirement(line) for line in requirements]
    while todo:
        requirement = todo.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(requirement.name)
        if name in names:
            continue
        names.add(name)
        try:
            requires = metadata.requires(requirement.name) or []
        except metadata.PackageNotFoundError:
            continue
        wanted_extras = requirement.extras
        for line in requires:
            child = Requirement(line)
            if child.marker is None or any(
                child.marker.evaluate({"extra": extra}) for extra in ("", *wanted_extras)
            ):
                child.marker = None
                todo.append(child)
    return names


def test_every_rule_env_installs_what_its_script_imports(tmp_path: Path):
    rules = workflow_rules(REPO / "config" / "microns.yaml", tmp_path)
    providers = metadata.packages_distributions()
    missing = []
    for name, rule in sorted(rules.items()):
        if rule["script"] is None:
            continue
        assert rule["conda"], f"rule {name} has no conda: env, so --sdm conda cannot run it"
        installed, extras = installed_by(rule["conda"])
        for module, importer in sorted(third_party_imports(rule["script"]).items()):
            dists = {canonicalize_name(dist) for dist in providers.get(module, [])}
            assert dists, f"{importer} imports {module}, which no installed distribution provides"
            if not dists & installed:
                missing.append(
                    f"rule {name}: {importer} imports {module} ({', '.join(sorted(dists))}), "
                    f"which {rule['conda'].relative_to(REPO)} (extras {extras}) does not install"
                )
    assert not missing, "\n".join(missing)


def test_the_import_walk_reaches_function_level_imports():
    """The cave source imports caveclient inside its functions; the walk must still see it."""
    reached = third_party_imports(REPO / "scripts" / "query.py")
    assert {"caveclient", "cloudvolume", "pandas", "requests"} <= set(reached)
    assert "synapse_ei" not in reached and "json" not in reached
