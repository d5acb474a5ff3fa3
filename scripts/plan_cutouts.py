"""Rule plan_cutouts: check the synapse positions against the EM volume, then assign each
synapse to a spatially coherent cutout shard."""

import logging
import sys

import pandas as pd

from synapse_ei.logs import log_to_file

console = sys.stderr  # log_to_file sends stderr to the log; a warning goes to both
log_to_file(snakemake.log[0])

from synapse_ei.cutout.plan import check_positions, plan_shards  # noqa: E402
from synapse_ei.cutout.volume import open_volume, volume_info  # noqa: E402
from synapse_ei.outputs import read_json, write_parquet  # noqa: E402

synapses = pd.read_parquet(snakemake.input.synapses)
plan = plan_shards(synapses, n_shards=snakemake.params.shards)  # also checks ids and positions
provenance = read_json(snakemake.input.provenance)
# Read from the config, not rule params: they only decide whether the check passes, so
# changing them must not rerun the plan and every cutout after it.
config = snakemake.config
files = config["dataset"].get("files") or {}
for warning in check_positions(
    synapses,
    volume_info(open_volume(provenance["em_path"], config["cutout"]["mip"])),
    provenance["position_resolution"],
    ask_to_confirm=provenance["source"] == "files"
    and not files.get("confirm_position_resolution", False),
    max_skipped_fraction=config["cutout"]["max_skipped_fraction"],
):
    logging.getLogger("plan_cutouts").warning(warning)
    print(f"plan_cutouts: warning: {warning}", file=console)
write_parquet(snakemake.output.plan, plan)
