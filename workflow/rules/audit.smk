# The leakage audit (synapse_ei.reporting.leakage): one image model and the connectivity baseline trained
# again on a random synapse-level split, reusing the cutouts, the training and evaluate scripts;
# `all` asks for it only with leakage_audit.enabled.


rule leaky_split:
    input:
        synapses=rules.split.output.synapses,
    output:
        synapses=f"{LEAKY}/synapses.parquet",
        audit=f"{LEAKY}/audit.json",
    log:
        f"{LOGS}/audit/leaky_split.log",
    benchmark:
        f"{BENCHMARKS}/audit/leaky_split.tsv"
    conda:
        "../../envs/synapse-ei.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        fractions=config["split"]["fractions"],
        seed=config["split"]["seed"],
    script:
        "../../scripts/leaky_split.py"


rule leaky_manifest:
    input:
        manifest=rules.gather_cutouts.output.manifest,
        split=rules.leaky_split.output.synapses,
    output:
        manifest=f"{LEAKY}/manifest.parquet",
    log:
        f"{LOGS}/audit/leaky_manifest.log",
    benchmark:
        f"{BENCHMARKS}/audit/leaky_manifest.tsv"
    conda:
        "../../envs/synapse-ei.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../../scripts/leaky_manifest.py"


use rule train as train_leaky with:
    input:
        manifest=rules.leaky_manifest.output.manifest,
        pretrained=pretrained_weights,
    output:
        model=f"{LEAKY}/models/{{model}}/model.pt",
        history=f"{LEAKY}/models/{{model}}/history.csv",
    log:
        f"{LOGS}/audit/train/{{model}}.log",
    benchmark:
        f"{BENCHMARKS}/audit/train/{{model}}.tsv"
    wildcard_constraints:
        model=alternatives([AUDIT_IMAGE_MODEL] if AUDIT_IMAGE_MODEL else []),
    # Snakemake merges `params` by name with train's: only these two differ (device stays, and
    # with it the GPU the profiles give).
    params:
        # The cutouts of the neuron split: the leaky manifest only relabels them.
        cutout_root=os.path.dirname(rules.gather_cutouts.output.manifest),
        checkpoint_dir=lambda wildcards: f"{LEAKY}/checkpoints/{wildcards.model}",


use rule train_connectivity as train_connectivity_leaky with:
    input:
        split=rules.leaky_split.output.synapses,
        synapses=rules.query.output.synapses,
        cell_types=rules.query.output.cell_types,
    output:
        model=f"{LEAKY}/models/{{model}}/model.joblib",
        history=f"{LEAKY}/models/{{model}}/history.csv",
    log:
        f"{LOGS}/audit/train/{{model}}.log",
    benchmark:
        f"{BENCHMARKS}/audit/train/{{model}}.tsv"
    wildcard_constraints:
        model=alternatives([AUDIT_BASELINE] if AUDIT_BASELINE else []),


use rule evaluate_connectivity as evaluate_connectivity_leaky with:
    input:
        model=f"{LEAKY}/models/{{model}}/model.joblib",
        history=f"{LEAKY}/models/{{model}}/history.csv",
        split=rules.leaky_split.output.synapses,
        synapses=rules.query.output.synapses,
        cell_types=rules.query.output.cell_types,
        provenance=rules.query.output.provenance,
    output:
        metrics=f"{LEAKY}/eval/{{model}}/metrics.json",
        predictions=f"{LEAKY}/eval/{{model}}/predictions.parquet",
        confusion=f"{LEAKY}/eval/{{model}}/confusion_matrix.png",
        roc=f"{LEAKY}/eval/{{model}}/roc.png",
        pr=f"{LEAKY}/eval/{{model}}/pr.png",
        reliability=f"{LEAKY}/eval/{{model}}/reliability.png",
        curves=f"{LEAKY}/eval/{{model}}/training_curves.png",
        synapses_needed=f"{LEAKY}/eval/{{model}}/synapses_needed.png",
        synapses_needed_table=f"{LEAKY}/eval/{{model}}/synapses_needed.csv",
        breakdown=f"{LEAKY}/eval/{{model}}/recall_breakdown.png",
        breakdown_table=f"{LEAKY}/eval/{{model}}/recall_breakdown.csv",
    log:
        f"{LOGS}/audit/evaluate/{{model}}.log",
    benchmark:
        f"{BENCHMARKS}/audit/evaluate/{{model}}.tsv"
    wildcard_constraints:
        model=alternatives([AUDIT_BASELINE] if AUDIT_BASELINE else []),


use rule evaluate as evaluate_leaky with:
    input:
        model=f"{LEAKY}/models/{{model}}/model.pt",
        history=f"{LEAKY}/models/{{model}}/history.csv",
        manifest=rules.leaky_manifest.output.manifest,
        split=rules.leaky_split.output.synapses,
        synapses=rules.query.output.synapses,
        cell_types=rules.query.output.cell_types,
        provenance=rules.query.output.provenance,
    output:
        metrics=f"{LEAKY}/eval/{{model}}/metrics.json",
        predictions=f"{LEAKY}/eval/{{model}}/predictions.parquet",
        confusion=f"{LEAKY}/eval/{{model}}/confusion_matrix.png",
        roc=f"{LEAKY}/eval/{{model}}/roc.png",
        pr=f"{LEAKY}/eval/{{model}}/pr.png",
        reliability=f"{LEAKY}/eval/{{model}}/reliability.png",
        curves=f"{LEAKY}/eval/{{model}}/training_curves.png",
        synapses_needed=f"{LEAKY}/eval/{{model}}/synapses_needed.png",
        synapses_needed_table=f"{LEAKY}/eval/{{model}}/synapses_needed.csv",
        breakdown=f"{LEAKY}/eval/{{model}}/recall_breakdown.png",
        breakdown_table=f"{LEAKY}/eval/{{model}}/recall_breakdown.csv",
    log:
        f"{LOGS}/audit/evaluate/{{model}}.log",
    benchmark:
        f"{BENCHMARKS}/audit/evaluate/{{model}}.tsv"
    wildcard_constraints:
        model=alternatives([AUDIT_IMAGE_MODEL] if AUDIT_IMAGE_MODEL else []),
    # Merged by name with evaluate's params: only the cutouts' folder differs.
    params:
        cutout_root=os.path.dirname(rules.gather_cutouts.output.manifest),


rule leakage_audit:
    input:
        unpack(audit_metrics),
        neuron_split=rules.split.output.synapses,
        neuron_audit=rules.split.output.audit,
        leaky_split=rules.leaky_split.output.synapses,
        leaky_audit=rules.leaky_split.output.audit,
    output:
        json=f"{RESULTS}/audit/leakage.json",
        markdown=f"{RESULTS}/audit/leakage.md",
        html=report(
            f"{RESULTS}/audit/leakage.html",
            caption="../report/leakage_table.rst",
            category="Leakage audit",
        ),
        figure=report(
            f"{RESULTS}/audit/leakage.png",
            caption="../report/leakage_figure.rst",
            category="Leakage audit",
        ),
    log:
        f"{LOGS}/audit/leakage_audit.log",
    benchmark:
        f"{BENCHMARKS}/audit/leakage_audit.tsv"
    conda:
        "../../envs/synapse-ei.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        image_model=AUDIT_IMAGE_MODEL,
        baseline=AUDIT_BASELINE,
        seed=config["seed"],
    script:
        "../../scripts/leakage_audit.py"
