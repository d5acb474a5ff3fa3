"""Data-parallel training (learn.distributed) on the CPU: 2 processes, the gloo backend.

For the comparison with one process the model is resnet18 with GroupNorm: SyncBatchNorm runs on GPUs only (torch 2.14 refuses CPU
tensors), and unsynchronised BatchNorm normalises each process's half batch on its own; and
resnet18 has no dropout, whose draws differ between one process and two. Augmentation is off
for the same reason (each process draws its own).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch.utils.data import BatchSampler, SequentialSampler

from synapse_ei.errors import DataError
from synapse_ei.learn.distributed import RankBatches, World
from synapse_ei.learn.settings import TrainingSettings
from paths import REPO
from snakemake_helpers import SNAKEMAKE, environment
from training_helpers import run, stop_after_first_epoch

#: Seconds after which a tiny two-process training counts as hung (it takes about 20).
HANG_S = 300

#: EMA and the class-balanced sampler on: both must behave as in one process.
SETTINGS = {
    "epochs": 1, "batch_size": 8, "learning_rate": 0.003, "weight_decay": 0.0,
    "samples_per_epoch": 16, "norm": "group", "augmentations": [], "sampler": "balanced",
    "ema_decay": 0.9,
}


def weights(path, key):
    return torch.load(path, weights_only=True)[key]


def assert_same_weights(a, b, **tolerance):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], **tolerance, msg=name)


def test_two_processes_train_the_weights_of_one_with_the_same_global_batch(cutouts, tmp_path):
    one = run(cutouts, tmp_path / "one", settings=SETTINGS, architecture="resnet18")
    two = run(cutouts, tmp_path / "two", settings={**SETTINGS, "gpus": 2},
              architecture="resnet18")
    for name, key in (("ckpt/last.pt", "model"), ("ckpt/last.pt", "ema"),
                      ("out/model.pt", "state_dict")):
        assert_same_weights(weights(tmp_path / "one" / name, key),
                            weights(tmp_path / "two" / name, key), rtol=1e-3, atol=1e-4)
    # The history counts every process's samples: the same losses and accuracies.
    assert two["epoch"].tolist() == [1]
    for column in ("train_loss", "val_loss"):
        assert two[column].iloc[0] == pytest.approx(one[column].iloc[0], rel=1e-4)
    for column in ("train_accuracy", "val_accuracy", "val_balanced_accuracy"):
        assert two[column].iloc[0] == one[column].iloc[0]
    assert two["samples_per_second"].iloc[0] > 0
    saved = torch.load(tmp_path / "two" / "out" / "model.pt", weights_only=True)
    assert saved["settings"]["gpus"] == 2 and "gpus" not in torch.load(
        tmp_path / "one" / "out" / "model.pt", weights_only=True)["settings"]


def test_an_interrupted_two_process_run_resumes_to_the_same_end(cutouts, tmp_path):
    # Dropout, augmentation and BatchNorm on: each process's random state must resume as well.
    settings = {**SETTINGS, "epochs": 2, "gpus": 2, "norm": "batch",
                "augmentations": ["flip", "rotate", "noise"]}
    whole = run(cutouts, tmp_path / "whole", settings=settings)
    with pytest.raises(RuntimeError, match=r"training process 0 of 2 failed: .*stopped after"):
        run(cutouts, tmp_path / "cut", settings=settings, on_epoch_end=stop_after_first_epoch)
    assert not (tmp_path / "cut" / "out" / "model.pt").exists()
    assert weights(tmp_path / "cut" / "ckpt" / "last.pt", "epoch") == 1
    assert len(weights(tmp_path / "cut" / "ckpt" / "last.pt", "rng")) == 2  # one per process
    resumed = run(cutouts, tmp_path / "cut", settings=settings)
    assert resumed["epoch"].tolist() == [1, 2]
    assert resumed["train_loss"].tolist() == whole["train_loss"].tolist()
    assert resumed["val_loss"].tolist() == whole["val_loss"].tolist()
    for name, key in (("ckpt/last.pt", "model"), ("ckpt/last.pt", "ema"),
                      ("out/model.pt", "state_dict")):
        assert_same_weights(weights(tmp_path / "whole" / name, key),
                            weights(tmp_path / "cut" / name, key), rtol=0, atol=0)


def test_each_process_gets_the_jobs_threads_even_after_threads_ran_in_the_job(tmp_path):
    """`threads` are per training process (the train rule asks Slurm for threads x gpus CPUs),
    and a job whose own process has run multi-threaded torch ops first still starts them: a
    process forked from it would hang in its first multi-threaded op (libgomp is not
    fork-safe). In a fresh interpreter, whose OpenMP threads this test controls."""
    code = f"""
import torch
from pathlib import Path
from training_helpers import report_threads, run, write_learnable_cutouts
torch.set_num_threads(2)
a = torch.randn(1000, 1000)
(a @ a).add_(1).sum()  # OpenMP threads of this process have run
root = Path({str(tmp_path)!r})
try:
    run((root, write_learnable_cutouts(root)), root / "work", settings={dict(SETTINGS, gpus=2)!r},
        threads=2, on_epoch_end=report_threads)
except RuntimeError as error:
    print(error)
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), str(REPO / "tests"), str(Path(__file__).parent)])}
    try:
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                env=env, timeout=HANG_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"two training processes did not finish one tiny epoch in {HANG_S} s: hung")
    assert "training process 0 of 2 failed: Interrupted: intra-op threads 2" in result.stdout, (
        result.stdout[-2000:] + result.stderr[-4000:])


def test_the_train_script_trains_data_parallel_as_a_snakemake_job(cutouts, tmp_path):
    """scripts/train.py under Snakemake's `script:` with `gpus: 2`: each spawned process
    imports the job's script again, which must not train again."""
    root, manifest = cutouts
    settings = {**SETTINGS, "gpus": 2}
    (tmp_path / "Snakefile").write_text(f"""
rule train:
    input:
        manifest={str(manifest)!r},
    output:
        model="models/{{model}}/model.pt",
        history="models/{{model}}/history.csv",
    log:
        "logs/{{model}}.log",
    threads: 1
    params:
        architecture="resnet18", settings={settings!r}, cutout_root={str(root)!r},
        checkpoint_dir="checkpoints/{{model}}", seed=5, device="cpu", num_workers=0,
    script:
        {str(REPO / "scripts" / "train.py")!r}
""")
    result = subprocess.run(
        [*SNAKEMAKE, "--snakefile", str(tmp_path / "Snakefile"), "--directory", str(tmp_path),
         "--cores", "2", "models/m/model.pt"],
        capture_output=True, text=True, env=environment(), timeout=HANG_S,
    )  # fmt: skip
    log = (tmp_path / "logs" / "m.log").read_text() if (tmp_path / "logs" / "m.log").exists() else ""
    assert result.returncode == 0, result.stderr[-4000:] + log[-4000:]
    assert log.count("launching 2 training processes") == 1, log
    saved = torch.load(tmp_path / "models" / "m" / "model.pt", weights_only=True)
    assert saved["settings"]["gpus"] == 2
    assert pd.read_csv(tmp_path / "models" / "m" / "history.csv")["epoch"].tolist() == [1]


def test_each_process_takes_its_share_of_every_global_batch():
    batches = BatchSampler(SequentialSampler(range(11)), 4, drop_last=False)
    shares = [list(RankBatches(batches, World(rank, 2))) for rank in (0, 1)]
    assert shares == [[[0, 2], [4, 6], [8, 10]], [[1, 3], [5, 7], [9]]]
    assert len(RankBatches(batches, World(1, 2))) == 3


def test_gpus_must_divide_the_batch_and_be_positive(cutouts, tmp_path):
    with pytest.raises(DataError, match="batch_size 8 is not a multiple of gpus 3"):
        run(cutouts, tmp_path, settings={**SETTINGS, "gpus": 3}, architecture="resnet18")
    with pytest.raises(DataError, match="'gpus'"):
        TrainingSettings.from_config({"gpus": 0})
    # One process is the run of before the key: no `gpus` in its settings or checkpoints.
    assert "gpus" not in TrainingSettings.from_config({"gpus": 1}).as_dict()
    assert TrainingSettings.from_config({"gpus": 2}).as_dict()["gpus"] == 2
