"""Rule synthesize: write the embedded MICrONS-like dataset (tables and EM volume)."""

from pathlib import Path

from synapse_ei.logs import log_to_file

log_to_file(snakemake.log[0])

from synapse_ei.sources.synthetic.generator import synthesize  # noqa: E402

synthesize(out_dir=Path(snakemake.output.stats).parent, **snakemake.params.settings)
