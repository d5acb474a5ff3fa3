rule synthesize:
    output:
        synapses=f"{RESULTS}/synthetic/synapses.parquet",
        cell_types=f"{RESULTS}/synthetic/cell_types.parquet",
        truth=f"{RESULTS}/synthetic/truth.parquet",
        em=directory(f"{RESULTS}/synthetic/em"),
        stats=f"{RESULTS}/synthetic/stats.json",
    log:
        f"{LOGS}/synthesize.log",
    benchmark:
        f"{BENCHMARKS}/synthesize.tsv"
    conda:
        "../../envs/synapse-ei.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        settings=config["dataset"].get("synthetic", {}),
    script:
        "../../scripts/synthesize.py"


rule query:
    input:
        unpack(query_input),
    output:
        synapses=f"{RESULTS}/query/synapses.parquet",
        cell_types=f"{RESULTS}/query/cell_types.parquet",
        provenance=report(
            f"{RESULTS}/query/provenance.json",
            caption="../report/provenance.rst",
            category="Data",
        ),
    log:
        f"{LOGS}/query.log",
    benchmark:
        f"{BENCHMARKS}/query.tsv"
    conda:
        "../../envs/synapse-ei.yaml"
    # The CAVE query of all minnie65 neurons: about 7 GB peak and 3 minutes of client time
    # (bench/query.py, BENCHMARKS.md); the server's own time per query comes on top.
    resources:
        mem_mb=10000 if config["dataset"]["source"] == "cave" else 4000,
        runtime=180 if config["dataset"]["source"] == "cave" else 60,
    params:
        dataset=config["dataset"],
        synthetic_dir=f"{RESULTS}/synthetic",
    script:
        "../../scripts/query.py"


rule label:
    input:
        synapses=rules.query.output.synapses,
        cell_types=rules.query.output.cell_types,
        provenance=rules.query.output.provenance,
    output:
        synapses=f"{RESULTS}/labels/synapses.parquet",
        stats=report(
            f"{RESULTS}/labels/stats.json",
            caption="../report/label_stats.rst",
            category="Data",
        ),
    log:
        f"{LOGS}/label.log",
    benchmark:
        f"{BENCHMARKS}/label.tsv"
    conda:
        "../../envs/synapse-ei.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        column=config["labels"]["column"],
        classes=config["labels"]["classes"],
        max_synapses_per_class=config["labels"]["max_synapses_per_class"],
        # The seed of the class cap's sample: nothing to seed without a cap. Then 0, the
        # default, so the params of runs made before this stay as they were.
        seed=only_if(
            config["labels"]["max_synapses_per_class"] is not None,
            config["labels"]["seed"],
            otherwise=0,
        ),
    script:
        "../../scripts/label.py"
