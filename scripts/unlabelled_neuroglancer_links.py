"""Rule unlabelled_neuroglancer_links: the unlabelled-axon calls of a model, one Neuroglancer
link per axon."""

from synapse_ei.logs import log_to_file

log_to_file(snakemake.log[0])

from synapse_ei.viewer import write_unlabelled_links  # noqa: E402

write_unlabelled_links(
    snakemake.input.neurons,
    predictions_path=snakemake.input.predictions,
    synapses_path=snakemake.input.synapses,
    provenance_path=snakemake.input.provenance,
    out_path=snakemake.output.links,
    **snakemake.params.viewer,
)
