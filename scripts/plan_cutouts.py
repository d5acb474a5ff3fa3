"""Rule plan_cutouts: check the synapse positions against the EM volume, then assign each
synapse to a spatially coherent cutout shard."""

import sys

from synapse_ei.logs import log_to_file

console = sys.stderr  # log_to_file sends stderr to the log; a warning goes to both
log_to_file(snakemake.log[0])

from synapse_ei.cutout.plan import run_plan_cutouts  # noqa: E402

# Read from the config, not rule params: they only decide whether the check passes, so
# changing them must not rerun the plan and every cutout after it.
config = snakemake.config
for warning in run_plan_cutouts(
    snakemake.input.synapses,
    snakemake.input.provenance,
    snakemake.output.plan,
    n_shards=snakemake.params.shards,
    mip=config["cutout"]["mip"],
    confirm_position_resolution=(config["dataset"].get("files") or {}).get(
        "confirm_position_resolution", False
    ),
    max_skipped_fraction=config["cutout"]["max_skipped_fraction"],
):
    print(f"plan_cutouts: warning: {warning}", file=console)
