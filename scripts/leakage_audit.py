"""Rule leakage_audit: the neuron split against the leaky one, for three models, and the data."""

from synapse_ei.logs import log_to_file

log_to_file(snakemake.log[0])

from synapse_ei.reporting.leakage import run_leakage_audit  # noqa: E402

inputs, out = snakemake.input, snakemake.output
run_leakage_audit(
    split_paths={"neuron": inputs.neuron_split, "leaky": inputs.leaky_split},
    split_audit_paths={"neuron": inputs.neuron_audit, "leaky": inputs.leaky_audit},
    image_metrics_paths={"neuron": inputs.neuron_image, "leaky": inputs.leaky_image},
    connectivity_metrics_paths={"neuron": inputs.neuron_baseline, "leaky": inputs.leaky_baseline},
    image_model=snakemake.params.image_model,
    connectivity_model=snakemake.params.baseline,
    seed=snakemake.params.seed,
    out_paths={"json": out.json, "markdown": out.markdown, "html": out.html,
               "figure": out.figure},
)
