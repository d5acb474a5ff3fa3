# The settings of evaluation.evaluate.Analyses, from the config.
EVALUATE_ANALYSES = {
    "synapses_per_call": tuple(config["evaluate"]["synapses_per_call"]),
    "synapse_draws": config["evaluate"]["synapse_draws"],
    "breakdown_bins": config["evaluate"]["breakdown_bins"],
    "seed": config["seed"],
}


# The connectivity baseline's evaluation reads the tables only: it waits for no cutout and needs
# no GPU. The image models' (`evaluate`, below) is the same rule with the cutouts and a device.
rule evaluate_connectivity:
    input:
        model=f"{RESULTS}/models/{{model}}/model.joblib",
        history=f"{RESULTS}/models/{{model}}/history.csv",
        split=rules.split.output.synapses,
        synapses=rules.query.output.synapses,
        cell_types=rules.query.output.cell_types,
        provenance=rules.query.output.provenance,
    output:
        metrics=f"{RESULTS}/eval/{{model}}/metrics.json",
        predictions=f"{RESULTS}/eval/{{model}}/predictions.parquet",
        confusion=report(
            f"{RESULTS}/eval/{{model}}/confusion_matrix.png",
            caption="../report/confusion_matrix.rst",
            category="Per model",
            subcategory="{model}",
        ),
        roc=report(
            f"{RESULTS}/eval/{{model}}/roc.png",
            caption="../report/roc.rst",
            category="Per model",
            subcategory="{model}",
        ),
        pr=report(
            f"{RESULTS}/eval/{{model}}/pr.png",
            caption="../report/pr.rst",
            category="Per model",
            subcategory="{model}",
        ),
        reliability=report(
            f"{RESULTS}/eval/{{model}}/reliability.png",
            caption="../report/reliability.rst",
            category="Per model",
            subcategory="{model}",
        ),
        curves=report(
            f"{RESULTS}/eval/{{model}}/training_curves.png",
            caption="../report/training_curves.rst",
            category="Per model",
            subcategory="{model}",
        ),
        synapses_needed=report(
            f"{RESULTS}/eval/{{model}}/synapses_needed.png",
            caption="../report/synapses_needed.rst",
            category="Per model",
            subcategory="{model}",
        ),
        synapses_needed_table=report(
            f"{RESULTS}/eval/{{model}}/synapses_needed.csv",
            caption="../report/synapses_needed.rst",
            category="Per model",
            subcategory="{model}",
        ),
        breakdown=report(
            f"{RESULTS}/eval/{{model}}/recall_breakdown.png",
            caption="../report/recall_breakdown.rst",
            category="Per model",
            subcategory="{model}",
        ),
        breakdown_table=report(
            f"{RESULTS}/eval/{{model}}/recall_breakdown.csv",
            caption="../report/recall_breakdown.rst",
            category="Per model",
            subcategory="{model}",
        ),
    log:
        f"{LOGS}/evaluate/{{model}}.log",
    benchmark:
        f"{BENCHMARKS}/evaluate/{{model}}.tsv"
    wildcard_constraints:
        model=alternatives(BASELINE_MODELS),
    conda:
        "../../envs/synapse-ei.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        architecture=lambda wildcards: architecture(wildcards.model),
        analyses=EVALUATE_ANALYSES,
    script:
        "../../scripts/evaluate.py"


# A rule that runs a network takes a `device` param: the profiles give exactly those rules a
# GPU (tests/workflow/test_profiles.py finds them by it).
use rule evaluate_connectivity as evaluate with:
    input:
        model=f"{RESULTS}/models/{{model}}/model.pt",
        history=f"{RESULTS}/models/{{model}}/history.csv",
        manifest=rules.gather_cutouts.output.manifest,
        split=rules.split.output.synapses,
        synapses=rules.query.output.synapses,
        cell_types=rules.query.output.cell_types,
        provenance=rules.query.output.provenance,
    wildcard_constraints:
        model=alternatives(IMAGE_MODELS),
    threads: config["train"]["threads"]
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        architecture=lambda wildcards: architecture(wildcards.model),
        cutout_root=cutout_root,
        device=config["train"]["device"],
        tta=config["evaluate"]["tta"],
        analyses=EVALUATE_ANALYSES,


rule gallery:
    input:
        predictions=rules.evaluate.output.predictions,
        manifest=rules.gather_cutouts.output.manifest,
        synapses=rules.query.output.synapses,
        provenance=rules.query.output.provenance,
    output:
        gallery=report(
            f"{RESULTS}/eval/{{model}}/gallery.png",
            caption="../report/gallery.rst",
            category="Per model",
            subcategory="{model}",
        ),
        html=report(
            f"{RESULTS}/eval/{{model}}/gallery.html",
            caption="../report/gallery_html.rst",
            category="Per model",
            subcategory="{model}",
        ),
    log:
        f"{LOGS}/gallery/{{model}}.log",
    benchmark:
        f"{BENCHMARKS}/gallery/{{model}}.tsv"
    wildcard_constraints:
        model=alternatives(IMAGE_MODELS),
    conda:
        "../../envs/synapse-ei.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        architecture=lambda wildcards: architecture(wildcards.model),
        cutout_root=cutout_root,
        viewer=VIEWER_SOURCE_PARAMS,
    script:
        "../../scripts/gallery.py"
