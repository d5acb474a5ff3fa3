"""Rule gather_cutouts: one manifest of every cutout; fails loudly on an empty split or class."""

from pathlib import Path

from synapse_ei.logs import log_to_file

log_to_file(snakemake.log[0])

from synapse_ei.cutout import gather  # noqa: E402
from synapse_ei.io import write_json, write_parquet  # noqa: E402

manifest, stats = gather(snakemake.input.shards, out_root=Path(snakemake.output.manifest).parent)
write_parquet(snakemake.output.manifest, manifest)
write_json(snakemake.output.stats, stats)
