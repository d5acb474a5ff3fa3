"""Rule split: train/val/test by presynaptic neuron, with its audit."""

from synapse_ei.logs import log_to_file

log_to_file(snakemake.log[0])

from synapse_ei.curation.splits import run_split  # noqa: E402

run_split(
    snakemake.input.synapses,
    split_path=snakemake.output.synapses,
    audit_path=snakemake.output.audit,
    fractions=snakemake.params.fractions,
    seed=snakemake.params.seed,
    disjoint_postsynaptic=snakemake.params.disjoint_postsynaptic,
)
