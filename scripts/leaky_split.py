"""Rule leaky_split: the leakage audit's random synapse-level split, with its audit."""

import pandas as pd

from synapse_ei.logs import log_to_file

log_to_file(snakemake.log[0])

from synapse_ei.curation.splits import split_by_synapse  # noqa: E402
from synapse_ei.outputs import write_json, write_parquet  # noqa: E402

split, audit = split_by_synapse(
    pd.read_parquet(snakemake.input.synapses),
    fractions=snakemake.params.fractions,
    seed=snakemake.params.seed,
)
write_parquet(snakemake.output.synapses, split)
write_json(snakemake.output.audit, audit)
