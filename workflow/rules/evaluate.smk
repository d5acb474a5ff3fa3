rule evaluate:
    input:
        model=trained_model,
        history=f"{RESULTS}/models/{{model}}/history.csv",
        manifest=rules.gather_cutouts.output.manifest,
        split=rules.split.output.synapses,
        synapses=rules.query.output.synapses,
        cell_types=rules.query.output.cell_types,
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
        curves=report(
            f"{RESULTS}/eval/{{model}}/training_curves.png",
            caption="../report/training_curves.rst",
            category="Per model",
            subcategory="{model}",
        ),
    log:
        f"{LOGS}/evaluate/{{model}}.log",
    benchmark:
        f"{BENCHMARKS}/evaluate/{{model}}.tsv"
    wildcard_constraints:
        model=alternatives(MODELS),
    conda:
        "../../envs/synapse-ei.yaml"
    threads: config["train"]["threads"]
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        architecture=lambda wildcards: architecture(wildcards.model),
        cutout_root=lambda wildcards, input: os.path.dirname(input.manifest),
        device=config["train"]["device"],
    script:
        "../../scripts/evaluate.py"
