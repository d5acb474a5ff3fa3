"""Rule train_connectivity: the connectivity-only baseline (tables, no images)."""

from pathlib import Path

from synapse_ei.logs import log_to_file

log_to_file(snakemake.log[0])

from synapse_ei.connectivity import train_connectivity  # noqa: E402

train_connectivity(
    split_path=snakemake.input.split,
    synapses_path=snakemake.input.synapses,
    cell_types_path=snakemake.input.cell_types,
    label_column=snakemake.params.column,
    classes=snakemake.params.classes,
    out_dir=Path(snakemake.output.model).parent,
    seed=snakemake.params.seed,
)
