# Prediction on unlabelled synapses (not part of `all`): ask for it with a target, e.g.
#   snakemake --cores all results/predict/cnn2d/neurons.csv


rule plan_unlabelled:
    input:
        synapses=rules.query.output.synapses,
        cell_types=rules.query.output.cell_types,
    output:
        plan=f"{RESULTS}/predict/plan.parquet",
        stats=f"{RESULTS}/predict/selection.json",
    log:
        f"{LOGS}/predict/plan_unlabelled.log",
    benchmark:
        f"{BENCHMARKS}/predict/plan_unlabelled.tsv"
    conda:
        "../../envs/synapse-ei.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        shards=len(PREDICT_SHARDS),
        max_synapses_per_neuron=config["predict"]["max_synapses_per_neuron"],
        seed=config["predict"]["seed"],
    script:
        "../../scripts/plan_unlabelled.py"


use rule cutout as cutout_unlabelled with:
    input:
        plan=rules.plan_unlabelled.output.plan,
        provenance=rules.query.output.provenance,
    output:
        shard=directory(f"{RESULTS}/predict/cutouts/shards/{{shard}}"),
    log:
        f"{LOGS}/predict/cutout/{{shard}}.log",
    benchmark:
        f"{BENCHMARKS}/predict/cutout/{{shard}}.tsv"


rule predict_unlabelled:
    input:
        model=f"{RESULTS}/models/{{model}}/model.pt",
        metrics=f"{RESULTS}/eval/{{model}}/metrics.json",
        shards=expand(
            f"{RESULTS}/predict/cutouts/shards/{{shard}}", shard=PREDICT_SHARDS
        ),
        provenance=rules.query.output.provenance,
    output:
        synapses=f"{RESULTS}/predict/{{model}}/synapses.parquet",
        neurons=f"{RESULTS}/predict/{{model}}/neurons.csv",
        stats=f"{RESULTS}/predict/{{model}}/stats.json",
        # The calls as a CAVE cell_type_local table, and the version they were computed at.
        cave_table=f"{RESULTS}/predict/{{model}}/cave_calls.parquet",
        cave_csv=f"{RESULTS}/predict/{{model}}/cave_calls.csv",
        cave_meta=f"{RESULTS}/predict/{{model}}/cave_calls.json",
    log:
        f"{LOGS}/predict/{{model}}.log",
    benchmark:
        f"{BENCHMARKS}/predict/{{model}}.tsv"
    wildcard_constraints:
        model=alternatives(IMAGE_MODELS),
    conda:
        "../../envs/synapse-ei.yaml"
    threads: config["train"]["threads"]
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        device=config["train"]["device"],
        tta=config["evaluate"]["tta"],
    script:
        "../../scripts/predict_unlabelled.py"
