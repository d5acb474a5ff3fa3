# synapse-ei: excitatory/inhibitory synapse classification from connectomics EM.
# The DAG: synthesize? -> query -> label -> split -> cutout[shard] -> gather -> train[model]
#          -> evaluate[model] -> summary. See README.md and config/README.md.
from snakemake.utils import min_version, validate

min_version("9.0")


# A config given with --configfile replaces the demo's instead of being merged into it: merged,
# the demo's models would be trained on every other dataset too.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/split.smk"
include: "workflow/rules/cutout.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        all_targets(),
