"""Rule cutout: cut one shard's 2D patches and 3D cubes from the EM volume."""

from synapse_ei.logs import log_to_file

log_to_file(snakemake.log[0])

from synapse_ei.cutout.shard import run_cutout  # noqa: E402

run_cutout(
    snakemake.input.plan,
    snakemake.input.provenance,
    shard=snakemake.wildcards.shard,
    out_dir=snakemake.output.shard,
    mip=snakemake.params.mip,
    size_2d=tuple(snakemake.params.size_2d),
    size_3d=tuple(snakemake.params.size_3d),
    reader=snakemake.params.reader,
    # Read from the config, not a rule param: it only decides whether the shard fails, so
    # raising it after a failure must not rerun the shards that passed.
    max_skipped_fraction=snakemake.config["cutout"]["max_skipped_fraction"],
)
