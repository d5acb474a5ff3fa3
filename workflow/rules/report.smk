rule summary:
    input:
        metrics=expand(f"{RESULTS}/eval/{{model}}/metrics.json", model=MODELS),
    output:
        csv=report(
            f"{RESULTS}/summary/models.csv",
            caption="../report/summary.rst",
            category="Comparison",
        ),
        markdown=f"{RESULTS}/summary/models.md",
        figure=report(
            f"{RESULTS}/summary/models.png",
            caption="../report/summary_figure.rst",
            category="Comparison",
        ),
    log:
        f"{LOGS}/summary.log",
    benchmark:
        f"{BENCHMARKS}/summary.tsv"
    conda:
        "../../envs/synapse-ei.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        models=MODELS,
    script:
        "../../scripts/summary.py"
