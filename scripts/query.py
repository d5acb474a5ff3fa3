"""Rule query: the two tables of the configured source, plus its provenance."""

from synapse_ei.logs import log_to_file

log_to_file(snakemake.log[0])

from synapse_ei.outputs import write_json, write_parquet  # noqa: E402
from synapse_ei.sources import load_source  # noqa: E402

tables = load_source(snakemake.params.dataset, snakemake.params.synthetic_dir)
write_parquet(snakemake.output.synapses, tables.synapses)
write_parquet(snakemake.output.cell_types, tables.cell_types)
write_json(
    snakemake.output.provenance,
    {
        **tables.provenance,
        "em_path": tables.em_path,
        "position_resolution": list(tables.position_resolution),
        "rows": {"synapses": len(tables.synapses), "cell_types": len(tables.cell_types)},
    },
)
