# Neuroglancer links (synapse_ei.viewer): one per test neuron of every model, and one per
# unlabelled axon with the prediction target. The gallery's per-tile links are in evaluate.smk.


rule neuroglancer_links:
    input:
        predictions=f"{RESULTS}/eval/{{model}}/predictions.parquet",
        synapses=rules.query.output.synapses,
        provenance=rules.query.output.provenance,
    output:
        links=report(
            f"{RESULTS}/eval/{{model}}/neuroglancer.csv",
            caption="../report/neuroglancer_links.rst",
            category="Per model",
            subcategory="{model}",
        ),
    log:
        f"{LOGS}/neuroglancer/{{model}}.log",
    benchmark:
        f"{BENCHMARKS}/neuroglancer/{{model}}.tsv"
    wildcard_constraints:
        model=alternatives(MODELS),
    conda:
        "../../envs/synapse-ei.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        viewer=VIEWER_PARAMS,
    script:
        "../../scripts/neuroglancer_links.py"


rule unlabelled_neuroglancer_links:
    input:
        neurons=rules.predict_unlabelled.output.neurons,
        predictions=rules.predict_unlabelled.output.synapses,
        synapses=rules.query.output.synapses,
        provenance=rules.query.output.provenance,
    output:
        links=f"{RESULTS}/predict/{{model}}/neuroglancer.csv",
    log:
        f"{LOGS}/predict/neuroglancer/{{model}}.log",
    benchmark:
        f"{BENCHMARKS}/predict/neuroglancer/{{model}}.tsv"
    wildcard_constraints:
        model=alternatives(IMAGE_MODELS),
    conda:
        "../../envs/synapse-ei.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        viewer=VIEWER_PARAMS,
    script:
        "../../scripts/unlabelled_neuroglancer_links.py"
