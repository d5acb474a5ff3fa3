rule train:
    input:
        manifest=rules.gather_cutouts.output.manifest,
        pretrained=pretrained_weights,
    output:
        model=f"{RESULTS}/models/{{model}}/model.pt",
        history=f"{RESULTS}/models/{{model}}/history.csv",
    log:
        f"{LOGS}/train/{{model}}.log",
    benchmark:
        f"{BENCHMARKS}/train/{{model}}.tsv"
    wildcard_constraints:
        model=alternatives(IMAGE_MODELS),
    conda:
        "../../envs/synapse-ei.yaml"
    threads: config["train"]["threads"]
    resources:
        mem_mb=8000,
        runtime=720,
        # The model's `gpus`: one task, whose script starts a training process per GPU, each
        # with `threads` CPU threads, so the job's CPUs (and a profile's `mem_mb_per_cpu`)
        # grow with its GPUs.
        gpu=lambda wildcards: model_gpus(wildcards.model),
        cpus_per_task=lambda wildcards, threads: threads * model_gpus(wildcards.model),
    params:
        architecture=lambda wildcards: architecture(wildcards.model),
        settings=lambda wildcards: config["models"][wildcards.model],
        cutout_root=cutout_root,
        # Kept outside the declared outputs: Snakemake deletes those before a rerun, and a
        # preempted or failed job must resume from its last epoch.
        checkpoint_dir=lambda wildcards: f"{RESULTS}/checkpoints/{wildcards.model}",
        seed=config["seed"],
        device=config["train"]["device"],
        num_workers=config["train"]["num_workers"],
    script:
        "../../scripts/train.py"


rule train_connectivity:
    input:
        split=rules.split.output.synapses,
        synapses=rules.query.output.synapses,
        cell_types=rules.query.output.cell_types,
    output:
        model=f"{RESULTS}/models/{{model}}/model.joblib",
        history=f"{RESULTS}/models/{{model}}/history.csv",
    log:
        f"{LOGS}/train/{{model}}.log",
    benchmark:
        f"{BENCHMARKS}/train/{{model}}.tsv"
    wildcard_constraints:
        model=alternatives(BASELINE_MODELS),
    conda:
        "../../envs/synapse-ei.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        column=config["labels"]["column"],
        classes=config["labels"]["classes"],
        seed=config["seed"],
    script:
        "../../scripts/train_connectivity.py"
