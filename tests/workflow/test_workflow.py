"""The workflow as users run it: Snakemake on a mini DAG in a temporary directory."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml

from paths import MINI, REPO
from snakemake_helpers import environment, job_counts, run_snakemake, snakemake_command
from synapse_ei.evaluation.gallery import NO_GALLERY
from volume_helpers import make_synapses, make_volume, random_centres

MODELS = ["cnn2d", "r3d_18", "connectivity"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("mini")
    run_snakemake(workdir, "--cores", "2")
    return workdir / "results"


def test_dry_run_lists_every_stage(tmp_path):
    jobs = job_counts(run_snakemake(tmp_path, "-n", "--cores", "2").stdout)
    assert jobs == {
        "synthesize": 1,
        "query": 1,
        "label": 1,
        "split": 1,
        "plan_cutouts": 1,
        "cutout": 3,
        "gather_cutouts": 1,
        "train": 2,
        "train_connectivity": 1,
        "evaluate": 2,
        "evaluate_connectivity": 1,
        "gallery": 2,
        "neuroglancer_links": 3,
        "summary": 1,
        "all": 1,
        "total": 22,
    }


def test_the_baseline_is_evaluated_from_the_tables_without_waiting_for_cutouts(tmp_path):
    """The connectivity baseline's evaluation is a rule of its own, with no GPU and no cutouts."""
    plan = run_snakemake(
        tmp_path, "-n", "--cores", "2", "--", "results/eval/connectivity/metrics.json"
    )
    assert job_counts(plan.stdout) == {
        "synthesize": 1, "query": 1, "label": 1, "split": 1, "train_connectivity": 1,
        "evaluate_connectivity": 1, "total": 6,
    }  # fmt: skip


def test_lint_is_clean():
    result = run_snakemake(None, "--lint", configfile=None, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_invalid_config_names_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(MINI.read_text().replace("source: synthetic", "source: synthetc"))
    result = run_snakemake(tmp_path, "-n", "--configfile", str(bad), check=False)
    assert result.returncode != 0
    message = result.stdout + result.stderr
    assert "synthetc" in message and "source" in message


def test_a_files_source_must_state_its_position_resolution(tmp_path):
    for name in ("synapses.parquet", "cell_types.parquet"):
        (tmp_path / name).touch()  # never read by a dry run
    files = {"synapses": "synapses.parquet", "cell_types": "cell_types.parquet",
             "em_path": "precomputed://file:///nowhere"}
    config, settings = tmp_path / "files.yaml", yaml.safe_load(MINI.read_text())
    settings["dataset"] = {"source": "files", "files": files}
    config.write_text(yaml.safe_dump(settings))
    result = run_snakemake(tmp_path, "-n", "--configfile", str(config), check=False)
    assert result.returncode != 0
    assert "dataset.files.position_resolution is not set" in result.stdout + result.stderr
    files.update(position_resolution=[8, 8, 40], confirm_position_resolution=True)
    config.write_text(yaml.safe_dump(settings))
    assert "plan_cutouts" in job_counts(
        run_snakemake(tmp_path, "-n", "--configfile", str(config)).stdout)


@pytest.mark.workflow
def test_positions_at_half_their_resolution_stop_before_any_cutout(tmp_path):
    """An 8x8x40 nm export read as 4x4x40 on a volume that starts at 0 lands inside it, in the
    wrong place: the plan stops before any cutout job, naming the key that confirms."""
    em, _, _ = make_volume(tmp_path, "em", offset=(0, 0, 0), compress=False, with_mip1=False)
    centres = random_centres(120, seed=3, offset=(0, 0, 0))
    synapses = make_synapses(centres).drop(columns=["label", "split"])
    synapses[["ctr_pt_position_x", "ctr_pt_position_y", "ctr_pt_position_z"]] = centres
    synapses.to_parquet(tmp_path / "synapses.parquet")
    classes = np.array(["excitatory_neuron", "inhibitory_neuron"])[np.arange(120) % 2]
    pd.DataFrame({"pt_root_id": synapses["pre_pt_root_id"], "cell_type": "x",
                  "classification_system": classes}).to_parquet(tmp_path / "cells.parquet")
    settings = yaml.safe_load(MINI.read_text())
    files = {"synapses": "synapses.parquet", "cell_types": "cells.parquet", "em_path": em,
             "position_resolution": [4, 4, 40]}
    settings["dataset"] = {"source": "files", "files": files}
    config = tmp_path / "files.yaml"
    config.write_text(yaml.safe_dump(settings))
    plan = "results/cutouts/plan.parquet"
    result = run_snakemake(tmp_path, "--cores", "1", plan, "--configfile", str(config), check=False)
    assert result.returncode != 0 and not (tmp_path / plan).exists()
    said = (tmp_path / "results" / "logs" / "plan_cutouts.log").read_text()
    assert "would fit as well at [8.0, 8.0, 40.0] nm" in said
    assert "dataset.files.confirm_position_resolution: true" in said
    files["position_resolution"] = [8, 8, 40]  # the export's own: planned, no question asked
    config.write_text(yaml.safe_dump(settings))
    run_snakemake(tmp_path, "--cores", "1", plan, "--configfile", str(config))
    assert len(pd.read_parquet(tmp_path / plan)) > 0


def test_split_fractions_that_do_not_sum_to_one_stop_the_dry_run(tmp_path):
    """Checked with the schema, before any job: not in the split job after the cutouts."""

    def edit(config):
        config["split"]["fractions"] = {"train": 0.7, "val": 0.2, "test": 0.2}

    bad = config_with(tmp_path, "fractions.yaml", edit)
    result = run_snakemake(tmp_path, "-n", "--configfile", str(bad), check=False)
    assert result.returncode != 0
    said = result.stdout + result.stderr
    assert "split.fractions" in said and "sum to 1.1, not 1" in said
    assert "split.fractions.train, .val and .test" in said
    assert not (tmp_path / "results").exists()


def test_more_shards_than_the_schema_allows_are_refused_at_once(tmp_path):
    def edit(config):
        config["cutout"]["shards"] = 1025

    bad = config_with(tmp_path, "shards.yaml", edit)
    result = run_snakemake(tmp_path, "-n", "--configfile", str(bad), check=False)
    assert result.returncode != 0
    said = result.stdout + result.stderr
    assert "1025 is greater than the maximum of 1024" in said and "'shards'" in said


@pytest.mark.workflow
def test_more_shards_than_synapses_stop_at_the_plan_with_both_numbers(tmp_path):
    """The plan job knows the count: it stops, and no cutout job runs empty."""

    def edit(config):
        config["cutout"]["shards"] = 400  # the mini dataset labels 302 synapses

    bad = config_with(tmp_path, "shards.yaml", edit)
    result = run_snakemake(
        tmp_path, "--cores", "2", "results/cutouts/plan.parquet", "--configfile", str(bad),
        check=False,
    )
    assert result.returncode != 0
    log = (tmp_path / "results" / "logs" / "plan_cutouts.log").read_text()
    assert "cutout.shards: 400 shards for 302 synapse(s) would run 98 cutout job(s)" in log
    assert "Set cutout.shards to at most 302" in log
    assert not (tmp_path / "results" / "cutouts" / "shards").exists()


def test_a_tab_in_the_demo_config_names_the_file_and_line(tmp_path):
    """Snakemake's own message names neither (it reads a --configfile before the workflow, so
    there `python -m synapse_ei.preflight --configfile` does, tests/test_config.py)."""
    copy = tmp_path / "repo"
    for part in ("workflow", "config", "scripts"):
        shutil.copytree(REPO / part, copy / part)
    shutil.copy(REPO / "Snakefile", copy / "Snakefile")
    demo = copy / "config" / "config.yaml"
    lines = demo.read_text().splitlines(keepends=True)
    row = next(i for i, line in enumerate(lines) if line.startswith("  source:"))
    lines[row] = "\t" + lines[row].lstrip()
    demo.write_text("".join(lines))
    result = run_snakemake(None, "-n", configfile=None, cwd=copy, check=False)
    assert result.returncode != 0
    said = result.stdout + result.stderr
    assert f"config/config.yaml, line {row + 1}, column 1: not valid YAML" in said
    assert "tabs for indentation" in said
    assert not (copy / "results").exists()


def test_pretrained_weights_for_a_model_that_has_none_are_refused_at_once(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(MINI.read_text().replace(
        "    architecture: cnn2d\n", "    architecture: cnn2d\n    pretrained: imagenet\n"))
    result = run_snakemake(tmp_path, "-n", "--configfile", str(bad), check=False)
    assert result.returncode != 0
    said = result.stdout + result.stderr
    assert "'pretrained'" in said and "instance['models']['cnn2d']" in said


@pytest.mark.parametrize(
    ("audit", "models", "expected"),
    [
        ({"model": "connectivity"}, MODELS, "leakage_audit.model: 'connectivity' is not an image model"),
        ({"model": "resnet9"}, MODELS, "leakage_audit.model: 'resnet9' is not an image model"),
        ({}, ["cnn2d", "r3d_18"], "`models` has no entry with architecture connectivity"),
    ],
)
def test_a_leakage_audit_it_cannot_run_is_refused_at_once(tmp_path, audit, models, expected):
    """A bad audit setting stops the dry run with a message naming the key and the way out."""

    def edit(config):
        config["leakage_audit"] = {"enabled": True, **audit}
        config["models"] = {name: config["models"][name] for name in models}

    bad = config_with(tmp_path, "audit.yaml", edit)
    result = run_snakemake(tmp_path, "-n", "--configfile", str(bad), check=False)
    assert result.returncode != 0
    said = result.stdout + result.stderr
    assert expected in said and "leakage_audit.enabled to false" in said
    assert not (tmp_path / "results").exists()

@pytest.mark.workflow
def test_mini_dag_runs_end_to_end(finished_run: Path):
    results = finished_run
    split = pd.read_parquet(results / "splits" / "synapses.parquet")
    # Leakage-free: no presynaptic neuron and no synapse in two splits.
    assert split.groupby("pre_pt_root_id")["split"].nunique().max() == 1
    assert split["id"].is_unique
    assert set(split["split"]) == {"train", "val", "test"}
    assert set(split["label"]) == {"excitatory", "inhibitory"}
    assert split["pre_pt_root_id"].dtype == np.int64

    manifest = pd.read_parquet(results / "cutouts" / "manifest.parquet")
    assert len(manifest) > 0.9 * len(split)
    row = manifest.iloc[0]
    patch = tifffile.imread(results / "cutouts" / row["path_2d"])[row["stack_index"]]
    cube = tifffile.imread(results / "cutouts" / row["path_3d"])[row["stack_index"]]
    assert patch.dtype == np.uint8 and patch.shape == (32, 32)
    assert cube.dtype == np.uint8 and cube.shape == (8, 16, 16)
    assert patch.std() > 0 and cube.std() > 0

    for model in MODELS:
        metrics = json.loads((results / "eval" / model / "metrics.json").read_text())
        for key in ("accuracy", "balanced_accuracy", "roc_auc"):
            assert 0.0 <= metrics["test"][key] <= 1.0, (model, key, metrics["test"][key])
        for figure in ("confusion_matrix.png", "roc.png", "pr.png", "reliability.png",
                       "training_curves.png", "synapses_needed.png", "recall_breakdown.png"):
            assert (results / "eval" / model / figure).stat().st_size > 1000
        curve = pd.read_csv(results / "eval" / model / "synapses_needed.csv", dtype={"k": str})
        assert curve["k"].iloc[-1] == "all"
        assert curve["n_neurons"].iloc[-1] == metrics["counts"]["test"]["neurons"]["total"]
        breakdown = pd.read_csv(results / "eval" / model / "recall_breakdown.csv")
        by_type = breakdown[breakdown["grouping"] == "cell_type"]
        # The fine cell types of the cell-type table reach the test predictions.
        assert set(by_type["group"]) <= set(split["pre_cell_type"]) and len(by_type) > 1
        assert by_type["n_neurons"].sum() == metrics["counts"]["test"]["neurons"]["total"]
        for scores in (metrics["test"], metrics["tuned_threshold"]["test"]):
            assert set(scores["ci95"]) == {"accuracy", "balanced_accuracy", "roc_auc", "pr_auc"}
        has_gallery = (results / "eval" / model / "gallery.png").exists()
        assert has_gallery == (model != "connectivity")
        assert (results / "eval" / model / "gallery.html").exists() == has_gallery
        links = pd.read_csv(results / "eval" / model / "neuroglancer.csv")
        assert links["neuroglancer_link"].str.startswith("https://").all()
        assert metrics["gallery"] == ("gallery.png" if has_gallery else NO_GALLERY)
        predictions = pd.read_parquet(results / "eval" / model / "predictions.parquet")
        assert set(predictions.loc[predictions["split"] == "test", "id"]) <= set(
            split.loc[split["split"] == "test", "id"]
        )

    summary = pd.read_csv(results / "summary" / "models.csv")
    assert sorted(summary["model"]) == sorted(MODELS)
    assert (results / "summary" / "models.md").read_text().count("\n") >= len(MODELS) + 2
    assert all(model in (results / "summary" / "models.html").read_text() for model in MODELS)
    assert (results / "summary" / "curves.png").stat().st_size > 1000
    assert sorted(set(pd.read_csv(results / "summary" / "synapses_needed.csv")["model"])) == \
        sorted(MODELS)
    assert (results / "summary" / "recall_by_cell_type.csv").stat().st_size > 0
    for stage_stats in ("query/provenance.json", "labels/stats.json", "splits/audit.json",
                        "cutouts/stats.json"):
        assert json.loads((results / stage_stats).read_text())


@pytest.mark.workflow
def test_report_builds_offline(finished_run: Path):
    """`snakemake --report` gathers every figure and table by category, with no network."""
    workdir = finished_run.parent
    # A proxy that refuses every connection: any download the report tried would fail it.
    offline = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}
    offline.update({key.upper(): value for key, value in offline.items()})
    with pytest.MonkeyPatch.context() as patch:
        for key, value in offline.items():
            patch.setenv(key, value)
        run_snakemake(workdir, "--report", "results/report.html")
    text = (finished_run / "report.html").read_text()
    for category in ("Data", "Splits", "Per model", "Comparison"):
        assert f'"{category}"' in text, category
    for shown in ("stats.json", "audit.json", "models.html", "curves.png", "gallery.png",
                  "reliability.png", "pr.png", "synapses_needed.png", "recall_breakdown.png",
                  "recall_by_cell_type.csv", "gallery.html", "neuroglancer.csv"):
        assert shown in text, shown
    assert "reads no images and has no gallery" in text  # a caption made it in


@pytest.mark.workflow
def test_unlabelled_synapses_are_predicted_on_request(finished_run: Path):
    """The prediction target scores the synthetic orphan axons' synapses and calls each axon."""
    run_snakemake(finished_run.parent, "--cores", "2", "results/predict/cnn2d/neurons.csv",
                  "results/predict/cnn2d/neuroglancer.csv")
    predict = finished_run / "predict"
    synapses = pd.read_parquet(predict / "cnn2d" / "synapses.parquet")
    # The CSV holds the exact float; pandas' default parser may read it 1 ulp off.
    neurons = pd.read_csv(predict / "cnn2d" / "neurons.csv", float_precision="round_trip")
    typed = set(pd.read_parquet(finished_run / "query" / "cell_types.parquet")["pt_root_id"])
    assert len(synapses) > 0 and not set(synapses["pre_pt_root_id"]) & typed
    assert synapses["prob_inhibitory"].between(0, 1).all()
    assert sorted(neurons["pre_pt_root_id"]) == sorted(synapses["pre_pt_root_id"].unique())
    assert neurons["n_synapses"].sum() == len(synapses)
    assert set(neurons["predicted_label"]) <= {"excitatory", "inhibitory"}
    assert neurons["confidence"].between(0, 1).all()
    tuned = json.loads((finished_run / "eval" / "cnn2d" / "metrics.json").read_text())
    assert (neurons["threshold"] == tuned["tuned_threshold"]["threshold"]).all()
    assert neurons["expected_accuracy"].notna().any()
    calls = pd.read_csv(predict / "cnn2d" / "cave_calls.csv")
    assert sorted(calls["pt_root_id"]) == sorted(neurons["pre_pt_root_id"])
    assert calls["pt_position"].str.match(r"^\[\d+, \d+, \d+\]$").all()
    meta = json.loads((predict / "cnn2d" / "cave_calls.json").read_text())
    assert meta["schema"] == "cell_type_local" and "materialization_version" in meta
    links = pd.read_csv(predict / "cnn2d" / "neuroglancer.csv")
    assert links["pre_pt_root_id"].tolist() == neurons["pre_pt_root_id"].tolist()
    assert links["neuroglancer_link"].str.startswith("https://").all()


def config_with(tmp_path: Path, name: str, edit) -> Path:
    """The mini config with ``edit(config)`` applied, written to ``tmp_path/name``."""
    config = yaml.safe_load(MINI.read_text())
    edit(config)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def mtimes(results: Path) -> dict[Path, int]:
    return {path: path.stat().st_mtime_ns for path in results.rglob("*") if path.is_file()}


# Before the tests that remove or rewrite results: these need the finished run as it was.
def planned(workdir: Path, config: Path) -> dict[str, int]:
    """The jobs a dry run with ``config`` plans ({} for none)."""
    result = run_snakemake(workdir, "-n", "--cores", "2", "--configfile", str(config))
    if "Nothing to be done" in result.stdout + result.stderr:
        return {}
    return job_counts(result.stdout)


@pytest.mark.workflow
def test_a_setting_that_changes_no_output_reruns_nothing(finished_run: Path, tmp_path: Path):
    """Snakemake reruns a job whose params changed: only a real change may change them."""
    workdir = finished_run.parent

    def no_op(config):
        config["labels"]["seed"] = 9  # seeds the class cap's sample, and there is no cap
        config["cutout"]["size_2d"] = [32.0, 32]  # 32.0 is 32
        config["models"]["cnn2d"]["grad_clip"] = 1  # the default, 1.0

    assert planned(workdir, config_with(tmp_path, "same.yaml", no_op)) == {}

    def capped(config):
        config["labels"].update(seed=9, max_synapses_per_class=1000)

    assert planned(workdir, config_with(tmp_path, "capped.yaml", capped))["label"] == 1

    def resized(config):
        config["cutout"]["size_2d"] = [30, 32]

    counts = planned(workdir, config_with(tmp_path, "resized.yaml", resized))
    assert counts["cutout"] == 3 and "label" not in counts


@pytest.mark.workflow
def test_a_forced_rerun_retrains_from_scratch(finished_run: Path):
    """`--forcerun` a finished model: its checkpoint is not resumed, the model is trained again."""
    workdir = finished_run.parent
    log = finished_run / "logs" / "train" / "cnn2d.log"
    history = finished_run / "models" / "cnn2d" / "history.csv"
    first, first_log = pd.read_csv(history), log.read_text()
    # Everything again up to date afterwards, for the tests that follow.
    run_snakemake(workdir, "--cores", "2", "--forcerun", "results/models/cnn2d/model.pt")
    text = log.read_text()
    rerun = text[len(first_log):] if text.startswith(first_log) else text
    assert "is of a run that finished" in rerun and "resuming" not in rerun, rerun[-3000:]
    assert "cnn2d epoch 1/2:" in rerun and "cnn2d epoch 2/2:" in rerun
    again = pd.read_csv(history)
    assert again["epoch"].tolist() == [1, 2]
    # Trained again from the same seed: the same losses (on CPU).
    losses = ["train_loss", "val_loss"]
    pd.testing.assert_frame_equal(again[losses], first[losses])


@pytest.mark.workflow
def test_a_second_run_from_scratch_reproduces_the_first(finished_run: Path, tmp_path: Path):
    """Same config, new directory: identical tables, splits and cutouts, and on CPU metrics."""
    run_snakemake(tmp_path, "--cores", "2")
    again = tmp_path / "results"
    identical = [
        "query/synapses.parquet", "query/cell_types.parquet", "labels/synapses.parquet",
        "splits/synapses.parquet", "splits/audit.json", "cutouts/plan.parquet",
        "cutouts/manifest.parquet",
    ]  # fmt: skip
    identical += [
        str(path.relative_to(finished_run))
        for path in (finished_run / "cutouts" / "shards").rglob("*")
        if path.suffix in {".tif", ".parquet"}
    ]
    shards = len(list((finished_run / "cutouts" / "shards").iterdir()))
    assert len(identical) == 7 + 3 * shards  # each shard: two stacks and a manifest
    differ = [name for name in identical
              if (finished_run / name).read_bytes() != (again / name).read_bytes()]  # fmt: skip
    assert not differ, f"not byte-identical: {differ[:10]}"
    for model in MODELS:
        first, second = (json.loads((run / "eval" / model / "metrics.json").read_text())
                         for run in (finished_run, again))  # fmt: skip
        assert first["test"] == second["test"], model
        assert first["tuned_threshold"] == second["tuned_threshold"], model

    # Each run recorded what it ran with.
    (record_path,) = (again / "runs").glob("*.json")
    record = json.loads(record_path.read_text())
    assert record["status"] == "succeeded"
    assert record["packages"]["torch"] == "2.14.1" and record["packages"]["synapse-ei"]
    assert record["git"]["commit"] and len(record["git"]["commit"]) == 40
    assert record["config"]["models"].keys() == yaml.safe_load(MINI.read_text())["models"].keys()
    assert record["dataset"] == json.loads((again / "query" / "provenance.json").read_text())


@pytest.mark.workflow
def test_a_failed_model_reruns_alone_once_fixed(finished_run: Path, tmp_path: Path):
    """One model's training fails (its loss explodes); after the fix only that model reruns."""
    workdir = finished_run.parent
    untouched = {
        path: mtime for path, mtime in mtimes(finished_run).items()
        if not {"cnn2d", "summary", "logs", "benchmarks", "checkpoints"} & set(path.parts)
    }  # fmt: skip

    def explode(config):
        config["models"]["cnn2d"]["learning_rate"] = 1.0e30

    broken = config_with(tmp_path, "broken.yaml", explode)
    failed = run_snakemake(workdir, "--cores", "2", "--configfile", str(broken), check=False)
    assert failed.returncode != 0
    train_log = (finished_run / "logs" / "train" / "cnn2d.log").read_text()
    assert "loss is nan" in train_log.lower() or "loss is inf" in train_log.lower(), train_log[-2000:]
    # Snakemake removed the failed job's outputs; the other models are still there.
    assert not (finished_run / "models" / "cnn2d" / "model.pt").exists()

    fixed = run_snakemake(workdir, "-n", "--cores", "2").stdout
    assert job_counts(fixed) == {
        "train": 1, "evaluate": 1, "gallery": 1, "neuroglancer_links": 1, "summary": 1,
        "all": 1, "total": 6,
    }  # fmt: skip
    assert "model=cnn2d" in fixed
    run_snakemake(workdir, "--cores", "2")
    assert (finished_run / "eval" / "cnn2d" / "metrics.json").is_file()
    after = {path: path.stat().st_mtime_ns for path in untouched}
    changed = sorted(str(path.relative_to(finished_run)) for path in after if after[path] != untouched[path])
    assert not changed, f"rewritten although they did not fail: {changed}"


@pytest.mark.workflow
def test_an_interrupted_training_resumes_from_its_last_epoch(finished_run: Path, tmp_path: Path):
    """Kill a training job after its first epochs (as a preempted Slurm job is); rerun resumes."""
    workdir = finished_run.parent
    epochs = 6

    def add_model(config):
        config["models"]["resumable"] = {"architecture": "cnn2d", "epochs": epochs, "batch_size": 16}

    config = config_with(tmp_path, "resumable.yaml", add_model)
    target = "results/models/resumable/model.pt"
    log = finished_run / "logs" / "train" / "resumable.log"
    command = snakemake_command(workdir, "--cores", "2", target, configfile=config)
    job = subprocess.Popen(command, cwd=workdir, env=environment(), start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        while f"epoch 2/{epochs}:" not in (log.read_text() if log.exists() else ""):
            assert job.poll() is None, "training finished or failed before it could be interrupted"
            assert time.monotonic() < deadline, "no second epoch within 300 s"
            time.sleep(0.2)
    finally:
        # What Slurm does to a preempted job: SIGTERM to every process of the job.
        os.killpg(job.pid, signal.SIGTERM)
        job.wait(timeout=120)
    assert not (finished_run / "models" / "resumable" / "model.pt").exists()

    run_snakemake(
        workdir, "--cores", "2", "--configfile", str(config), "--rerun-incomplete", target
    )
    text = log.read_text()
    resumed = re.search(rf"resuming from .* after epoch (\d+) of {epochs}", text)
    assert resumed and int(resumed.group(1)) >= 2, text[-3000:]
    history = pd.read_csv(finished_run / "models" / "resumable" / "history.csv")
    assert history["epoch"].tolist() == list(range(1, epochs + 1))


@pytest.mark.workflow
def test_a_failed_shard_reruns_alone(finished_run: Path):
    """A shard whose job failed leaves no directory and no gathered manifest: only it reruns."""
    workdir = finished_run.parent
    cutouts = finished_run / "cutouts"
    before = {
        path: path.stat().st_mtime_ns
        for shard in ("000", "002")
        for path in (cutouts / "shards" / shard).rglob("*")
    }
    old_manifest = pd.read_parquet(cutouts / "manifest.parquet")
    # What a run whose shard 001 failed leaves: that shard's output removed by Snakemake, and
    # nothing downstream of it (gather, training, evaluation, summary) ever written.
    shutil.rmtree(cutouts / "shards" / "001")
    for name in ("manifest.parquet", "stats.json"):
        (cutouts / name).unlink()
    for downstream in ("models", "eval", "summary"):
        shutil.rmtree(finished_run / downstream)

    counts = job_counts(run_snakemake(workdir, "-n", "--cores", "2").stdout)
    assert counts["cutout"] == 1 and counts["gather_cutouts"] == 1
    assert not {"synthesize", "query", "label", "split", "plan_cutouts"} & set(counts)

    run_snakemake(workdir, "--cores", "2", str(cutouts.relative_to(workdir) / "manifest.parquet"))
    after = {path: path.stat().st_mtime_ns for path in before}
    assert after == before, "the shards that did not fail were rewritten"
    new_manifest = pd.read_parquet(cutouts / "manifest.parquet")
    pd.testing.assert_frame_equal(new_manifest, old_manifest)


def kill_shard_mid_write(workdir: Path, shard_dir: Path, attempts: int = 5) -> None:
    """Run the cutout job of ``shard_dir`` and SIGKILL its whole process group (as the OOM
    killer or a lost node does) once it has started writing its stacks but not its manifest."""
    target = str(shard_dir.relative_to(workdir))
    command = snakemake_command(workdir, "--cores", "1", "--rerun-incomplete", target)
    for _ in range(attempts):
        shutil.rmtree(shard_dir, ignore_errors=True)
        job = subprocess.Popen(command, cwd=workdir, env=environment(), start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        try:
            while job.poll() is None and time.monotonic() < deadline:
                if any(path.stat().st_size > 0 for path in shard_dir.glob(".3d.tif.*.tmp")):
                    os.killpg(job.pid, signal.SIGKILL)
                    job.wait(timeout=60)
                    if not (shard_dir / "manifest.parquet").exists():
                        return
                    break  # it finished between the look and the kill: try again
                time.sleep(0.001)
        finally:
            if job.poll() is None:
                os.killpg(job.pid, signal.SIGKILL)
                job.wait(timeout=60)
    raise AssertionError(f"could not catch {target} mid-write in {attempts} attempts")


@pytest.mark.workflow
def test_a_killed_shard_is_redone_alone(finished_run: Path):
    """A cutout job SIGKILLed mid-write leaves a partial shard: the next run redoes only it."""
    workdir = finished_run.parent
    cutouts = finished_run / "cutouts"
    killed = cutouts / "shards" / "002"
    old_files = {path.relative_to(killed): path.read_bytes() for path in killed.glob("*.tif")}
    others = {
        path: path.stat().st_mtime_ns
        for shard in ("000", "001") for path in (cutouts / "shards" / shard).rglob("*")
    }  # fmt: skip
    old_manifest = pd.read_parquet(cutouts / "manifest.parquet")

    kill_shard_mid_write(workdir, killed)
    assert list(killed.glob(".*.tif.*.tmp")), "the kill did not leave a partial stack"
    assert not list(killed.glob("*.tif")), "a stack of the killed job looks complete"

    # Snakemake knows the shard is incomplete: it refuses to trust it without being told...
    refused = run_snakemake(workdir, "-n", "--cores", "2", check=False)
    assert refused.returncode != 0
    said = refused.stdout + refused.stderr
    assert "--rerun-incomplete" in said and "results/cutouts/shards/002" in said
    # ...with --rerun-incomplete it plans that shard alone, then the gathering...
    target = str((cutouts / "manifest.parquet").relative_to(workdir))
    counts = job_counts(
        run_snakemake(workdir, "-n", "--cores", "2", "--rerun-incomplete", target).stdout
    )
    assert counts == {"cutout": 1, "gather_cutouts": 1, "total": 2}
    # ...but the killed run still holds the lock, and the message says how to remove it.
    locked = run_snakemake(workdir, "--cores", "2", "--rerun-incomplete", target, check=False)
    assert locked.returncode != 0 and "--unlock" in locked.stdout + locked.stderr
    run_snakemake(workdir, "--unlock")
    run_snakemake(workdir, "--cores", "2", "--rerun-incomplete", target)

    assert {path: path.stat().st_mtime_ns for path in others} == others
    redone = {path.relative_to(killed): path.read_bytes() for path in killed.glob("*.tif")}
    assert redone == old_files
    assert not list(killed.rglob("*.tmp")), "a half-written temporary file survived the rerun"
    pd.testing.assert_frame_equal(pd.read_parquet(cutouts / "manifest.parquet"), old_manifest)


def test_configfile_replaces_the_demo_config(tmp_path):
    """`--configfile` gives exactly its own models, never the demo's merged in."""
    own = tmp_path / "own.yaml"
    own.write_text(MINI.read_text().split("models:")[0] + "models:\n  only:\n    architecture: cnn2d\n")
    result = run_snakemake(None, "-n", configfile=own)
    trained = {line.split("/")[2] for line in result.stdout.split() if line.startswith("results/models/")}
    assert trained == {"only"}


def test_microns_config_dry_run_needs_no_network(tmp_path):
    """The real-data DAG is planned offline: nothing reads a table or the network at parse time."""
    result = run_snakemake(tmp_path, "-n", configfile=REPO / "config" / "microns.yaml", cwd=REPO)
    assert "synthesize" not in result.stdout
    counts = job_counts(result.stdout)
    assert counts["cutout"] == 256 and counts["train"] == 7 and counts["evaluate"] == 7


def test_a_data_error_is_printed_on_the_console_not_only_in_the_log(tmp_path):
    """Snakemake's console says "check log file(s)"; the job's own error is printed there too."""
    (tmp_path / "syn.csv").write_text("id,size\n1,40\n")
    (tmp_path / "cells.csv").write_text("pt_root_id,cell_type\n7,excitatory_neuron\n")

    def from_files(config):
        config["dataset"] = {"source": "files", "files": {
            "synapses": "syn.csv", "cell_types": "cells.csv",
            "em_path": "precomputed://file:///nowhere", "position_resolution": [4, 4, 40],
        }}  # fmt: skip

    config = config_with(tmp_path, "files.yaml", from_files)
    result = run_snakemake(tmp_path, "--configfile", str(config), "--cores", "1",
                       "results/query/synapses.parquet", check=False)  # fmt: skip
    assert result.returncode != 0
    console = result.stdout + result.stderr
    said = re.search(r"DataError: synapse table syn\.csv: missing required column\(s\) .*"
                     r"'ctr_pt_position_x'.*Rename the columns", console)
    assert said, console[-3000:]
    assert "(traceback in results/logs/query.log)" in console

