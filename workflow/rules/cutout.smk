rule plan_cutouts:
    input:
        synapses=rules.split.output.synapses,
        provenance=rules.query.output.provenance,
    output:
        plan=f"{RESULTS}/cutouts/plan.parquet",
    log:
        f"{LOGS}/plan_cutouts.log",
    benchmark:
        f"{BENCHMARKS}/plan_cutouts.tsv"
    conda:
        "../../envs/synapse-ei.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        shards=len(SHARDS),
    script:
        "../../scripts/plan_cutouts.py"


rule cutout:
    input:
        plan=rules.plan_cutouts.output.plan,
        provenance=rules.query.output.provenance,
    output:
        shard=directory(f"{RESULTS}/cutouts/shards/{{shard}}"),
    log:
        f"{LOGS}/cutout/{{shard}}.log",
    benchmark:
        f"{BENCHMARKS}/cutout/{{shard}}.tsv"
    wildcard_constraints:
        shard=r"\d+",
    conda:
        "../../envs/synapse-ei.yaml"
    threads: CUTOUT_THREADS
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        mip=config["cutout"]["mip"],
        size_2d=config["cutout"]["size_2d"],
        size_3d=config["cutout"]["size_3d"],
        reader=config["cutout"]["reader"],
    script:
        "../../scripts/cutout.py"


rule gather_cutouts:
    input:
        shards=expand(f"{RESULTS}/cutouts/shards/{{shard}}", shard=SHARDS),
    output:
        manifest=f"{RESULTS}/cutouts/manifest.parquet",
        stats=report(
            f"{RESULTS}/cutouts/stats.json",
            caption="../report/cutout_stats.rst",
            category="Data",
        ),
    log:
        f"{LOGS}/gather_cutouts.log",
    benchmark:
        f"{BENCHMARKS}/gather_cutouts.tsv"
    conda:
        "../../envs/synapse-ei.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    script:
        "../../scripts/gather_cutouts.py"
