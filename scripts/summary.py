"""Rule summary: one table and one figure comparing every model."""

from synapse_ei.logs import log_to_file

log_to_file(snakemake.log[0])

from synapse_ei.report import summarize, summary_figure, write_summary  # noqa: E402

table = summarize(dict(zip(snakemake.params.models, snakemake.input.metrics)))
write_summary(table, snakemake.output.csv, snakemake.output.markdown)
summary_figure(table, snakemake.output.figure)
