"""The README's "The stages" table names, for every rule, the package function its script calls."""

from __future__ import annotations

import importlib
import re

from paths import REPO

RULE = re.compile(r"^rule (\w+):|^use rule (\w+) as (\w+) with:", re.MULTILINE)
SCRIPT = re.compile(r"script:\s*\n\s*\"\.\./\.\./scripts/(\w+)\.py\"")


def rule_scripts() -> dict[str, str]:
    """Every rule of the workflow and the script it runs (a ``use rule`` runs its parent's)."""
    scripts, parents = {}, {}
    for path in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        text = path.read_text()
        starts = list(RULE.finditer(text))
        for match, after in zip(starts, [*starts[1:], None]):
            body = text[match.end(): after.start() if after else len(text)]
            if match.group(1):
                found = SCRIPT.search(body)
                if found:
                    scripts[match.group(1)] = found.group(1)
            else:
                parents[match.group(3)] = match.group(2)
    for child in parents:
        parent = child
        while parent in parents:  # a variant of a variant runs its root's script
            parent = parents[parent]
        scripts[child] = scripts[parent]
    return scripts


def readme_calls() -> dict[str, str]:
    """Rule -> the first function its README row names (``module.function``)."""
    text = (REPO / "README.md").read_text()
    section = text.split("## The stages", 1)[1].split("\n## ", 1)[0]
    calls = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split(" | ")]
        rule = re.fullmatch(r"`(\w+)`", cells[0])
        if rule and len(cells) >= 2:
            calls[rule.group(1)] = re.match(r"`([\w.]+)`", cells[1]).group(1)
    return calls


def test_every_rule_has_a_row_naming_the_function_its_script_imports():
    scripts, calls = rule_scripts(), readme_calls()
    assert set(calls) == set(scripts)
    for rule, call in calls.items():
        module, name = call.rsplit(".", 1)
        assert callable(getattr(importlib.import_module(f"synapse_ei.{module}"), name)), rule
        script = (REPO / "scripts" / f"{scripts[rule]}.py").read_text()
        assert re.search(rf"from synapse_ei\.{re.escape(module)} import [^\n]*\b{name}\b",
                         script), f"scripts/{scripts[rule]}.py does not import {call} ({rule})"
