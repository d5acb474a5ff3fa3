"""Rule predict_unlabelled: one model's probabilities for unlabelled synapses; their neurons."""

from synapse_ei.logs import log_to_file

log_to_file(snakemake.log[0])

from synapse_ei.unlabelled import predict_unlabelled  # noqa: E402

predict_unlabelled(
    snakemake.input.model,
    metrics_path=snakemake.input.metrics,
    shard_dirs=snakemake.input.shards,
    synapses_out=snakemake.output.synapses,
    neurons_out=snakemake.output.neurons,
    stats_out=snakemake.output.stats,
    provenance_path=snakemake.input.provenance,
    cave_out={"table": snakemake.output.cave_table, "csv": snakemake.output.cave_csv,
              "meta": snakemake.output.cave_meta},
    model_name=snakemake.wildcards.model,
    device=snakemake.params.device,
    tta=snakemake.params.tta,
)
