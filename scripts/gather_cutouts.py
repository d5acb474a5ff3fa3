"""Rule gather_cutouts: one manifest of every cutout; fails loudly on an empty split or class,
or on too many skipped synapses."""

import sys

from synapse_ei.logs import log_to_file

console = sys.stderr  # log_to_file sends stderr to the log; the skip summary goes to both
log_to_file(snakemake.log[0])

from synapse_ei.cutout.gather import run_gather_cutouts  # noqa: E402

for line in run_gather_cutouts(
    snakemake.input.shards,
    snakemake.output.manifest,
    snakemake.output.stats,
    # Read from the config, not a rule param: it only decides whether the gather fails, so
    # changing it must not make every model retrain on an unchanged manifest.
    max_skipped_fraction=snakemake.config["cutout"]["max_skipped_fraction"],
):
    print(line, file=console)
    print(line, file=sys.stderr)
