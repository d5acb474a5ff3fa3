# The config in canonical form, paths, the model list and the shard list. Nothing here reads a
# data table: parsing the workflow must stay instant whatever the dataset's size.

import json
import os


def whole_number_as_int(text):
    # 40.0 and 40 are the same setting: every stage reads a number with float() or int().
    number = float(text)
    return int(number) if number.is_integer() else number


# Snakemake compares a rule's params with the last run's as text: with every key sorted and
# whole numbers written one way, a config file whose keys are merely reordered, whose defaults
# are filled in or that writes 40.0 for 40 reruns nothing.
_canonical = json.loads(
    json.dumps(config, sort_keys=True), parse_float=whole_number_as_int
)
config.clear()
config.update(_canonical)

RESULTS = "results"
LOGS = f"{RESULTS}/logs"
BENCHMARKS = f"{RESULTS}/benchmarks"

MODELS = list(config["models"])
SHARDS = [f"{index:03d}" for index in range(config["cutout"]["shards"])]
# The unlabelled synapses' cutouts (workflow/rules/predict.smk) have their own shard count.
PREDICT_SHARDS = [f"{index:03d}" for index in range(config["predict"]["shards"])]
# A cutout job reads (decodes) in one thread while another cuts and writes; tensorstore decodes
# in as many threads as the job is given.
CUTOUT_THREADS = 2


def architecture(model):
    return config["models"][model]["architecture"]


def model_gpus(model):
    """GPUs that train ``model`` data-parallel (its `gpus`, default 1)."""
    return int(config["models"][model].get("gpus", 1))


BASELINE_MODELS = [m for m in MODELS if architecture(m) == "connectivity"]
IMAGE_MODELS = [m for m in MODELS if architecture(m) != "connectivity"]


def cutout_root(wildcards, input):
    """The cutouts' folder as a param: the one that holds the rule's input manifest."""
    return os.path.dirname(input.manifest)


def alternatives(names):
    """A wildcard constraint that matches exactly these names (and nothing when empty)."""
    return "|".join(names) if names else "(?!)"


def only_if(applies, value, otherwise=None):
    """A setting as a rule's param: ``value`` where it shapes the output, else ``otherwise``.
    Snakemake reruns a job whose params changed; a setting without effect must not."""
    return value if applies else otherwise


# The Neuroglancer links' settings (synapse_ei.viewer): the serving URL of a local volume only
# where the EM is local (every source but cave), the point cap only where neurons are drawn.
VIEWER_SOURCE_PARAMS = {
    "site": config["viewer"]["site"],
    "local_url": only_if(
        config["dataset"]["source"] != "cave", config["viewer"]["local_url"]
    ),
}
VIEWER_PARAMS = {
    **VIEWER_SOURCE_PARAMS,
    "max_points": config["viewer"]["max_points_per_link"],
}


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
# synapse_ei.learn.models.pretrained.PUBLISHED_NAMES (importing it would load torch at every parse).
PUBLISHED_NAMES = ("imagenet", "kinetics400")


def pretrained_weights(wildcards):
    """A model's local pretrained-weights file as an input: a missing one fails before any job."""
    source = config["models"][wildcards.model].get("pretrained")
    return [] if source is None or source in PUBLISHED_NAMES else [source]


def all_targets():
    return [
        f"{RESULTS}/summary/models.csv",
        f"{RESULTS}/summary/models.md",
        f"{RESULTS}/summary/models.png",
        f"{RESULTS}/summary/models.html",
        f"{RESULTS}/summary/curves.png",
        *expand(f"{RESULTS}/eval/{{model}}/metrics.json", model=MODELS),
        *expand(f"{RESULTS}/eval/{{model}}/gallery.png", model=IMAGE_MODELS),
        *expand(f"{RESULTS}/eval/{{model}}/gallery.html", model=IMAGE_MODELS),
        *expand(f"{RESULTS}/eval/{{model}}/neuroglancer.csv", model=MODELS),
        *leakage_audit_targets(),
    ]


def leakage_audit_targets():
    """The leakage audit's outputs (workflow/rules/audit.smk), only with leakage_audit.enabled."""
    if not config["leakage_audit"]["enabled"]:
        return []
    return [
        f"{RESULTS}/audit/leakage.{suffix}" for suffix in ("json", "md", "html", "png")
    ]


# The leakage audit (workflow/rules/audit.smk): its models and where their leaky-split files go.
LEAKY = f"{RESULTS}/audit/leaky"


def audited_models():
    """(image model, connectivity baseline) of the audit: leakage_audit.model or the first
    image model, and the first connectivity entry of `models`."""
    chosen = config["leakage_audit"]["model"]
    image = chosen if chosen is not None else next(iter(IMAGE_MODELS), None)
    if image not in IMAGE_MODELS:
        raise ValueError(
            f"leakage_audit.model: {image!r} is not an image model of `models` "
            f"({IMAGE_MODELS}); name one, or set leakage_audit.enabled to false."
        )
    if not BASELINE_MODELS:
        raise ValueError(
            "leakage_audit: `models` has no entry with architecture connectivity; add one "
            "(the audit compares it), or set leakage_audit.enabled to false."
        )
    return image, BASELINE_MODELS[0]


AUDIT_IMAGE_MODEL, AUDIT_BASELINE = (
    audited_models() if config["leakage_audit"]["enabled"] else (None, None)
)


def audit_metrics(wildcards):
    """The metrics.json of both audited models under both splits."""
    if AUDIT_IMAGE_MODEL is None:
        raise ValueError(
            "leakage_audit.enabled is false: set it to true to run the leakage audit."
        )
    return {
        "neuron_image": f"{RESULTS}/eval/{AUDIT_IMAGE_MODEL}/metrics.json",
        "leaky_image": f"{LEAKY}/eval/{AUDIT_IMAGE_MODEL}/metrics.json",
        "neuron_baseline": f"{RESULTS}/eval/{AUDIT_BASELINE}/metrics.json",
        "leaky_baseline": f"{LEAKY}/eval/{AUDIT_BASELINE}/metrics.json",
    }
