"""Rule neuroglancer_links: one Neuroglancer link per test neuron of a model."""

from synapse_ei.logs import log_to_file

log_to_file(snakemake.log[0])

from synapse_ei.viewer import write_test_links  # noqa: E402

write_test_links(
    snakemake.input.predictions,
    synapses_path=snakemake.input.synapses,
    provenance_path=snakemake.input.provenance,
    out_path=snakemake.output.links,
    **snakemake.params.viewer,
)
