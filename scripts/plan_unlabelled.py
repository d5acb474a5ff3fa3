"""Rule plan_unlabelled: the synapses whose presynaptic cell has no type, in cutout shards."""

from synapse_ei.logs import log_to_file

log_to_file(snakemake.log[0])

from synapse_ei.unlabelled import plan_unlabelled  # noqa: E402

plan_unlabelled(
    snakemake.input.synapses,
    cell_types_path=snakemake.input.cell_types,
    plan_path=snakemake.output.plan,
    stats_path=snakemake.output.stats,
    n_shards=snakemake.params.shards,
    max_synapses_per_neuron=snakemake.params.max_synapses_per_neuron,
    seed=snakemake.params.seed,
)
