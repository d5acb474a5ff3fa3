"""Rule gallery: right and wrong test calls of one image model, with their probabilities, as a
figure and as an HTML page linking each tile to Neuroglancer."""

from synapse_ei.logs import log_to_file

log_to_file(snakemake.log[0])

from synapse_ei.evaluation.gallery import write_gallery  # noqa: E402

write_gallery(
    snakemake.input.predictions,
    manifest_path=snakemake.input.manifest,
    cutout_root=snakemake.params.cutout_root,
    architecture=snakemake.params.architecture,
    model_name=snakemake.wildcards.model,
    out_path=snakemake.output.gallery,
    html_path=snakemake.output.html,
    provenance_path=snakemake.input.provenance,
    synapses_path=snakemake.input.synapses,
    **snakemake.params.viewer,
)
