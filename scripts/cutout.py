"""Rule cutout: cut one shard's 2D patches and 3D cubes from the EM volume."""

import pandas as pd

from synapse_ei.logs import log_to_file

log_to_file(snakemake.log[0])

from synapse_ei.cutout.shard import cut_shard  # noqa: E402
from synapse_ei.outputs import read_json  # noqa: E402

provenance = read_json(snakemake.input.provenance)
cut_shard(
    pd.read_parquet(snakemake.input.plan),
    shard=int(snakemake.wildcards.shard),
    em_path=provenance["em_path"],
    mip=snakemake.params.mip,
    position_resolution=provenance["position_resolution"],
    size_2d=tuple(snakemake.params.size_2d),
    size_3d=tuple(snakemake.params.size_3d),
    out_dir=snakemake.output.shard,
    reader=snakemake.params.reader,
    # Read from the config, not a rule param: it only decides whether the shard fails, so
    # raising it after a failure must not rerun the shards that passed.
    max_skipped_fraction=snakemake.config["cutout"]["max_skipped_fraction"],
)
