"""The configuration beyond its JSON Schema: a YAML file read with the line of its mistake, and
the checks that tie several keys together.

The Snakefile calls :func:`check` right after the schema, so a bad value stops the run before
any job starts; the stage that uses a value calls the same function (one rule in one place).
Snakemake reads a ``--configfile`` before the workflow and reports a YAML mistake without its
file or line: ``python -m synapse_ei.preflight --configfile my.yaml`` reads it with
:func:`read_config_file`, which names both. Imported at parse time, so only the standard
library and PyYAML (Snakemake loads both).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from shlex import quote
from typing import Any

import yaml

from synapse_ei.errors import DataError

SPLITS = ("train", "val", "test")
#: The workflow's config schema: the one place for the config's defaults.
SCHEMA = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"


def model_defaults() -> dict[str, Any]:
    """Every setting of a ``models`` entry with its schema default (None where it has none),
    in the schema's order."""
    schema = yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))
    properties = schema["properties"]["models"]["additionalProperties"]["properties"]
    return {key: spec.get("default") for key, spec in properties.items()}


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML (or JSON) config file as a dict; a syntax error names the file, line and column."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise DataError(f"{path}: no such config file.") from error
    except UnicodeDecodeError as error:
        raise DataError(
            f"{path}: not UTF-8 text; save the config file as UTF-8, e.g. "
            f"`iconv -f WINDOWS-1252 -t UTF-8 {quote(str(path))} > fixed.yaml`."
        ) from error
    try:
        config = yaml.safe_load(text)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
        line = text.splitlines()[mark.line] if mark and mark.line < len(text.splitlines()) else ""
        # No `expand` command: a tab's width is a guess, and a wrong one silently moves the key
        # under another parent.
        hint = (
            " YAML does not allow tabs for indentation: indent that line with spaces, as deep "
            "as the keys it belongs with."
            if "\t" in line or "\t" in str(error.problem)
            else ""
        )
        raise DataError(
            f"{where}: not valid YAML ({error.problem}).{hint} The line: {line!r}"
        ) from error
    except yaml.YAMLError as error:
        raise DataError(f"{path}: not valid YAML ({error}).") from error
    if not isinstance(config, dict):
        raise DataError(f"{path}: a config file is a map of keys (seed:, dataset:, ...).")
    return config


def check_split_fractions(fractions: Mapping[str, float]) -> dict[str, float]:
    """``split.fractions`` as floats: exactly train/val/test, each in (0, 1), summing to 1."""
    if not isinstance(fractions, Mapping) or set(fractions) != set(SPLITS):
        keys = sorted(fractions) if isinstance(fractions, Mapping) else fractions
        raise DataError(f"split.fractions: keys {keys} must be exactly {list(SPLITS)}.")
    try:
        values = {name: float(fractions[name]) for name in SPLITS}
    except (TypeError, ValueError) as error:
        raise DataError(f"split.fractions: {dict(fractions)} must all be numbers.") from error
    bad = [name for name, value in values.items() if not 0 < value < 1]
    if bad:
        raise DataError(
            f"split.fractions.{bad[0]}: {values[bad[0]]} must be between 0 and 1 (exclusive): "
            "every split needs neurons of both classes."
        )
    total = sum(values.values())
    if not math.isclose(total, 1.0, abs_tol=1e-6):
        raise DataError(
            f"split.fractions: {values} sum to {total:g}, not 1; adjust split.fractions.train, "
            ".val and .test so that they sum to 1."
        )
    return values


def require_position_resolution(config: Mapping[str, Any]) -> None:
    """The ``files`` source must state ``dataset.files.position_resolution``: read at a wrong
    default, positions at 8x8x40 nm land in the right volume, in the wrong place, silently."""
    dataset = config.get("dataset") or {}
    files = dataset.get("files") or {}
    if dataset.get("source") == "files" and "position_resolution" not in files:
        raise DataError(
            "dataset.files.position_resolution is not set. Give the nm per voxel (XYZ) of the "
            "positions in your synapse table, e.g. `position_resolution: [4, 4, 40]` under "
            "dataset.files for CAVE's default export, [8, 8, 40] for positions in the voxels "
            "of MICrONS' EM mip 0. There is no default: positions read at the wrong resolution "
            "are cut from the wrong place without an error when the volume starts at 0."
        )


def check(config: Mapping[str, Any]) -> None:
    """The checks a schema cannot make, on a config the schema has validated."""
    check_split_fractions(config["split"]["fractions"])


def plain(value: Any) -> Any:
    """Config values (Snakemake's mapping types included) as plain dicts, lists and scalars."""
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value
