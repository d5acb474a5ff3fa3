"""Rule leaky_manifest: the cutout manifest relabelled with the leaky split (no new cutouts)."""

from synapse_ei.logs import log_to_file

log_to_file(snakemake.log[0])

from synapse_ei.reporting.leakage import run_leaky_manifest  # noqa: E402

run_leaky_manifest(snakemake.input.manifest, snakemake.input.split, snakemake.output.manifest)
