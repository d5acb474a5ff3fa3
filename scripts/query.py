"""Rule query: the two tables of the configured source, plus its provenance."""

from synapse_ei.logs import log_to_file

log_to_file(snakemake.log[0])

from synapse_ei.sources import run_query  # noqa: E402

run_query(
    snakemake.params.dataset,
    snakemake.params.synthetic_dir,
    synapses_path=snakemake.output.synapses,
    cell_types_path=snakemake.output.cell_types,
    provenance_path=snakemake.output.provenance,
)
