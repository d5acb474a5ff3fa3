"""Rule leaky_manifest: the cutout manifest relabelled with the leaky split (no new cutouts)."""

import pandas as pd

from synapse_ei.logs import log_to_file

log_to_file(snakemake.log[0])

from synapse_ei.outputs import write_parquet  # noqa: E402
from synapse_ei.reporting.leakage import with_split_of  # noqa: E402

write_parquet(
    snakemake.output.manifest,
    with_split_of(
        pd.read_parquet(snakemake.input.manifest),
        pd.read_parquet(snakemake.input.split),
        where=snakemake.input.manifest,
    ),
)
