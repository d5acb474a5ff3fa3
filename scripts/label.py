"""Rule label: E/I of each synapse from its presynaptic cell's class."""

import pandas as pd

from synapse_ei.logs import log_to_file

log_to_file(snakemake.log[0])

from synapse_ei.curation.labels import label_synapses  # noqa: E402
from synapse_ei.outputs import read_json, write_json, write_parquet  # noqa: E402

labelled, stats = label_synapses(
    pd.read_parquet(snakemake.input.synapses),
    pd.read_parquet(snakemake.input.cell_types),
    column=snakemake.params.column,
    classes=snakemake.params.classes,
    max_synapses_per_class=snakemake.params.max_synapses_per_class,
    seed=snakemake.params.seed,
    # Only the files source drops verbatim repeats of cell-type rows (an export appended twice).
    repeated_cell_type_rows=read_json(snakemake.input.provenance).get(
        "repeated_cell_type_rows_dropped", 0
    ),
)
write_parquet(snakemake.output.synapses, labelled)
write_json(snakemake.output.stats, stats)
