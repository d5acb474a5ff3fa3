"""Data sources: each returns the same two tables and the path of the EM volume.

``synthetic`` reads what :func:`synapse_ei.sources.synthetic.generator.synthesize` wrote, ``files``
reads table exports on disk, ``cave`` queries a CAVE materialization at a pinned version. Every
later stage runs the same code whatever the source.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from synapse_ei.outputs import write_json, write_parquet


@dataclass
class SourceTables:
    """What every source provides.

    ``synapses`` follows :data:`synapse_ei.tables.SYNAPSE_REQUIRED` (plus any optional columns),
    ``cell_types`` follows :data:`synapse_ei.tables.CELL_TYPE_REQUIRED`; ids are int64.
    ``position_resolution`` is the nm-per-voxel (XYZ) of the synapse table's positions.
    ``provenance`` is JSON-serialisable: source name, versions, paths, row counts.
    """

    synapses: pd.DataFrame
    cell_types: pd.DataFrame
    em_path: str
    position_resolution: tuple[float, float, float]
    provenance: dict[str, Any] = field(default_factory=dict)


def load_source(dataset: dict[str, Any], synthetic_dir: str) -> SourceTables:
    """Load the tables of the configured source (the ``dataset`` section of the config)."""
    source = dataset["source"]
    if source == "synthetic":
        from synapse_ei.sources.synthetic import generator

        return generator.load(synthetic_dir)
    if source == "files":
        from synapse_ei.config import require_position_resolution
        from synapse_ei.sources import files

        require_position_resolution({"dataset": dataset})
        settings = dataset["files"]
        return files.load(
            synapses=settings["synapses"],
            cell_types=settings["cell_types"],
            em_path=settings["em_path"],
            position_resolution=settings["position_resolution"],
            columns=settings.get("columns"),
            segmentation_path=settings.get("segmentation_path"),
        )
    if source == "cave":
        from synapse_ei.sources import cave

        return cave.load(**dataset["cave"])
    from synapse_ei.errors import DataError

    raise DataError(
        f"dataset.source: unknown source {source!r}; use 'synthetic', 'files' or 'cave'."
    )


def query_provenance(tables: SourceTables) -> dict[str, Any]:
    """What the query stage records beside its tables: the source's own provenance, with the EM
    path, the positions' resolution and the row counts of the tables as written."""
    return {
        **tables.provenance,
        "em_path": tables.em_path,
        "position_resolution": list(tables.position_resolution),
        "rows": {"synapses": len(tables.synapses), "cell_types": len(tables.cell_types)},
    }


def run_query(
    dataset: dict[str, Any],
    synthetic_dir: str,
    synapses_path: str | Path,
    cell_types_path: str | Path,
    provenance_path: str | Path,
) -> SourceTables:
    """The query stage: :func:`load_source`, then write its two tables and
    :func:`query_provenance`."""
    tables = load_source(dataset, synthetic_dir)
    write_parquet(synapses_path, tables.synapses)
    write_parquet(cell_types_path, tables.cell_types)
    write_json(provenance_path, query_provenance(tables))
    return tables
