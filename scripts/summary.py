"""Rule summary: one table (CSV, Markdown, HTML) and figures comparing every model."""

from synapse_ei.logs import log_to_file

log_to_file(snakemake.log[0])

from synapse_ei.reporting.summary import run_summary  # noqa: E402

run_summary(snakemake.params.models, snakemake.input.metrics, snakemake.input.predictions,
            dict(snakemake.output.items()))
