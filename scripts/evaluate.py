"""Rule evaluate: predict the val and test synapses with one model, then score the test split."""

from pathlib import Path

from synapse_ei.logs import log_to_file

log_to_file(snakemake.log[0])

from synapse_ei.connectivity import predict_connectivity  # noqa: E402
from synapse_ei.evaluation.evaluate import evaluate_predictions  # noqa: E402
from synapse_ei.evaluation.gallery import NO_GALLERY  # noqa: E402
from synapse_ei.learn.inference import predict_cutouts  # noqa: E402
from synapse_ei.learn.models import input_kind  # noqa: E402

image_model = snakemake.params.architecture != "connectivity"
if not image_model:
    predictions = predict_connectivity(
        snakemake.input.model,
        split_path=snakemake.input.split,
        synapses_path=snakemake.input.synapses,
        cell_types_path=snakemake.input.cell_types,
    )
else:
    predictions = predict_cutouts(
        snakemake.input.model,
        manifest_path=snakemake.input.manifest,
        cutout_root=snakemake.params.cutout_root,
        device=snakemake.params.device,
        tta=snakemake.params.tta,
    )
evaluate_predictions(
    predictions,
    history_path=snakemake.input.history,
    model_name=snakemake.wildcards.model,
    out_dir=Path(snakemake.output.metrics).parent,
    details={
        "architecture": snakemake.params.architecture,
        "input": input_kind(snakemake.params.architecture),
        "tta": snakemake.params.tta if image_model else "none: table-only model",
        "gallery": "gallery.png" if image_model else NO_GALLERY,
    },
)
