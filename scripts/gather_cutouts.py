"""Rule gather_cutouts: one manifest of every cutout; fails loudly on an empty split or class,
or on too many skipped synapses."""

import sys
from pathlib import Path

from synapse_ei.logs import log_to_file

console = sys.stderr  # log_to_file sends stderr to the log; the skip summary goes to both
log_to_file(snakemake.log[0])

from synapse_ei.cutout.gather import gather, skipped_summary  # noqa: E402
from synapse_ei.outputs import write_json, write_parquet  # noqa: E402

manifest, stats = gather(
    snakemake.input.shards,
    out_root=Path(snakemake.output.manifest).parent,
    # Read from the config, not a rule param: it only decides whether the gather fails, so
    # changing it must not make every model retrain on an unchanged manifest.
    max_skipped_fraction=snakemake.config["cutout"]["max_skipped_fraction"],
)
for line in skipped_summary(stats):
    print(line, file=console)
    print(line, file=sys.stderr)
write_parquet(snakemake.output.manifest, manifest)
write_json(snakemake.output.stats, stats)
