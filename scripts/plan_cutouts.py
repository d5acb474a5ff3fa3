"""Rule plan_cutouts: assign each synapse to a spatially coherent cutout shard."""

import pandas as pd

from synapse_ei.logs import log_to_file

log_to_file(snakemake.log[0])

from synapse_ei.cutout import plan_shards  # noqa: E402
from synapse_ei.io import write_parquet  # noqa: E402

plan = plan_shards(pd.read_parquet(snakemake.input.synapses), n_shards=snakemake.params.shards)
write_parquet(snakemake.output.plan, plan)
