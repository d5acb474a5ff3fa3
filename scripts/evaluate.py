"""Rule evaluate: predict the val and test synapses with one model, then score the test split."""

from pathlib import Path

from synapse_ei.logs import log_to_file

log_to_file(snakemake.log[0])

from synapse_ei.evaluation.evaluate import Analyses, run_evaluate  # noqa: E402

run_evaluate(
    snakemake.params.architecture,
    model_path=snakemake.input.model,
    history_path=snakemake.input.history,
    split_path=snakemake.input.split,
    synapses_path=snakemake.input.synapses,
    cell_types_path=snakemake.input.cell_types,
    provenance_path=snakemake.input.provenance,
    model_name=snakemake.wildcards.model,
    out_dir=Path(snakemake.output.metrics).parent,
    manifest_path=snakemake.input.get("manifest"),
    cutout_root=snakemake.params.get("cutout_root"),
    device=snakemake.params.get("device", "auto"),
    tta=snakemake.params.get("tta", "d4"),
    analyses=Analyses(**snakemake.params.analyses),
)
