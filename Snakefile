# synapse-ei: excitatory/inhibitory synapse classification from connectomics EM.
# The DAG: synthesize? -> query -> label -> split -> cutout[shard] -> gather -> train[model]
#          -> evaluate[model] -> summary. See README.md and config/README.md.
import os

from snakemake.utils import min_version, validate

from synapse_ei.config import check, read_config_file, require_position_resolution

min_version("9.0")


# A config given with --configfile replaces the demo's instead of being merged into it: merged,
# the demo's models would be trained on every other dataset too.
if not workflow.overwrite_configfiles:
    # Snakemake's own YAML error names neither the file nor the line. The path is relative to
    # the working directory, as for `configfile:`, which also reports a missing file.
    if os.path.exists("config/config.yaml"):
        read_config_file("config/config.yaml")

    configfile: "config/config.yaml"


# Before the schema, whose message for a missing key is a dump of the schema.
require_position_resolution(config)
validate(config, "workflow/schemas/config.schema.yaml")
# What the schema cannot say (fractions summing to 1), checked before any job as the rest is.
check(config)


# First: it puts the config in the canonical form every rule's params are taken from.
include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/split.smk"
include: "workflow/rules/cutout.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/predict.smk"
include: "workflow/rules/viewer.smk"
include: "workflow/rules/audit.smk"


# Light rules run where Snakemake runs (a cluster's login node), not as cluster jobs.
localrules:
    gather_cutouts,
    summary,


rule all:
    default_target: True
    input:
        all_targets(),


# Every run that does something leaves results/runs/<start time>.json: package versions, the
# config, the git commit and, once the run ends, the dataset provenance (synapse_ei.provenance).
RUN_RECORD = []


onstart:
    # A missing token or a wrong EM path must show in seconds, not after hours in the queue:
    # the preflight's checks, before the first Slurm job (no hook runs on a dry run; the
    # synthetic source needs no account and makes its own EM).
    if (
        workflow.executor_plugin.cli_prefix == "slurm"
        and config["dataset"]["source"] != "synthetic"
    ):
        from synapse_ei.preflight import before_cluster_run

        before_cluster_run(config, workflow.executor_settings)
    from synapse_ei.provenance import start_run_record

    RUN_RECORD.append(start_run_record(RESULTS, config, workflow.basedir))


onsuccess:
    from synapse_ei.provenance import finish_run_record

    finish_run_record(RUN_RECORD[0], True, f"{RESULTS}/query/provenance.json")


onerror:
    from synapse_ei.provenance import finish_run_record

    finish_run_record(RUN_RECORD[0], False, f"{RESULTS}/query/provenance.json")
