# Paths, the model list and the shard list. Nothing here reads a data table: parsing the
# workflow must stay instant whatever the dataset's size.

import os

RESULTS = "results"
LOGS = f"{RESULTS}/logs"
BENCHMARKS = f"{RESULTS}/benchmarks"

MODELS = list(config["models"])
SHARDS = [f"{index:03d}" for index in range(config["cutout"]["shards"])]


def architecture(model):
    return config["models"][model]["architecture"]


BASELINE_MODELS = [m for m in MODELS if architecture(m) == "connectivity"]
IMAGE_MODELS = [m for m in MODELS if architecture(m) != "connectivity"]


def alternatives(names):
    """A wildcard constraint that matches exactly these names (and nothing when empty)."""
    return "|".join(names) if names else "(?!)"


def query_input(wildcards):
    """The query reads what the configured source provides, so Snakemake tracks those files."""
    source = config["dataset"]["source"]
    if source == "synthetic":
        return {"stats": f"{RESULTS}/synthetic/stats.json"}
    if source == "files":
        files = config["dataset"]["files"]
        return {"synapses": files["synapses"], "cell_types": files["cell_types"]}
    if source == "cave":
        return {}
    raise ValueError(f"dataset.source: unknown source {source!r}")


# The `pretrained` values that name published weights, not a file: a copy of
# synapse_ei.models.pretrained.PUBLISHED_NAMES (importing it would load torch at every parse).
PUBLISHED_NAMES = ("imagenet", "kinetics400")


def pretrained_weights(wildcards):
    """A model's local pretrained-weights file as an input: a missing one fails before any job."""
    source = config["models"][wildcards.model].get("pretrained")
    return [] if source is None or source in PUBLISHED_NAMES else [source]


def trained_model(wildcards):
    suffix = "joblib" if architecture(wildcards.model) == "connectivity" else "pt"
    return f"{RESULTS}/models/{wildcards.model}/model.{suffix}"


def all_targets():
    return [
        f"{RESULTS}/summary/models.csv",
        f"{RESULTS}/summary/models.md",
        f"{RESULTS}/summary/models.png",
        f"{RESULTS}/summary/models.html",
        f"{RESULTS}/summary/curves.png",
        *expand(f"{RESULTS}/eval/{{model}}/metrics.json", model=MODELS),
        *expand(f"{RESULTS}/eval/{{model}}/gallery.png", model=IMAGE_MODELS),
    ]
