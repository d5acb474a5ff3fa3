"""Rule label: E/I of each synapse from its presynaptic cell's class."""

from synapse_ei.logs import log_to_file

log_to_file(snakemake.log[0])

from synapse_ei.curation.labels import run_label  # noqa: E402

run_label(
    snakemake.input.synapses,
    snakemake.input.cell_types,
    snakemake.input.provenance,
    labelled_path=snakemake.output.synapses,
    stats_path=snakemake.output.stats,
    column=snakemake.params.column,
    classes=snakemake.params.classes,
    max_synapses_per_class=snakemake.params.max_synapses_per_class,
    seed=snakemake.params.seed,
)
