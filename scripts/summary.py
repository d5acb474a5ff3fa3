"""Rule summary: one table (CSV, Markdown, HTML) and figures comparing every model."""

from synapse_ei.logs import log_to_file

log_to_file(snakemake.log[0])

from synapse_ei.reporting.summary import comparison_curves, summarize, summary_figure, write_summary

table = summarize(dict(zip(snakemake.params.models, snakemake.input.metrics)))
write_summary(table, snakemake.output.csv, snakemake.output.markdown, snakemake.output.html)
summary_figure(table, snakemake.output.figure)
comparison_curves(dict(zip(snakemake.params.models, snakemake.input.predictions)),
                  snakemake.output.curves)
