"""Checks of the configuration whose failure the JSON schema cannot word clearly. The Snakefile
runs them before the schema validation, so the message names the key and what to write. Only
the standard library here: the Snakefile imports this at every parse."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from synapse_ei.errors import DataError


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
