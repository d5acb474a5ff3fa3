"""Training loop and checkpoint resume on a tiny learnable dataset (CPU)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from synapse_ei.cutout import stacks
from synapse_ei.cutout.stacks import write_stack
from synapse_ei.errors import DataError
from synapse_ei.learn import train as train_module, transforms
from synapse_ei.learn.inference import load_trained, predict_cutouts
from synapse_ei.learn.settings import TrainingSettings
from synapse_ei.learn.train import class_weights, HISTORY_COLUMNS, warmup_cosine
from training_helpers import run, SETTINGS_2D, write_learnable_cutouts

#: Every stateful technique at once: resume must replay the EMA, sampler, mixing and schedule.
TECHNIQUES_2D = {
    **SETTINGS_2D, "optimizer": "adam", "warmup_epochs": 1, "loss": "focal", "sampler": "balanced",
    "mixup": 0.4, "cutmix": 1.0, "ema_decay": 0.9,
    "augmentations": ["flip", "rotate", "elastic", "intensity", "blur", "noise"],
}


class Interrupt(Exception):
    pass


def test_training_writes_model_and_history(uninterrupted):
    work, history = uninterrupted
    saved = pd.read_csv(work / "out" / "history.csv")
    assert list(saved.columns) == HISTORY_COLUMNS
    assert saved["epoch"].tolist() == [1, 2]
    assert np.isfinite(saved[["train_loss", "val_loss", "samples_per_second"]]).all().all()
    pd.testing.assert_frame_equal(saved, history, check_dtype=False)
    model, meta = load_trained(work / "out" / "model.pt")
    assert meta["architecture"] == "cnn2d" and meta["input_kind"] == "2d"
    assert meta["cutout_shape"] == [32, 32]
    assert meta["class_names"] == ["excitatory", "inhibitory"]
    assert meta["best_epoch"] in (1, 2)
    assert not model.training


@pytest.fixture(scope="module")
def uninterrupted_techniques(cutouts, tmp_path_factory):
    work = tmp_path_factory.mktemp("uninterrupted_techniques")
    return work, run(cutouts, work, settings=TECHNIQUES_2D)


@pytest.mark.parametrize("techniques", [False, True], ids=["plain", "ema-mixup-balanced"])
def test_resume_continues_and_matches_uninterrupted_run(cutouts, request, tmp_path, techniques):
    settings = TECHNIQUES_2D if techniques else SETTINGS_2D
    fixture = "uninterrupted_techniques" if techniques else "uninterrupted"
    work, history = request.getfixturevalue(fixture)

    def stop_after_first(row):
        raise Interrupt

    with pytest.raises(Interrupt):
        run(cutouts, tmp_path, settings=settings, on_epoch_end=stop_after_first)
    assert not (tmp_path / "out" / "model.pt").exists()
    assert (tmp_path / "ckpt" / "last.pt").exists()

    resumed_epochs = []
    resumed = run(cutouts, tmp_path, settings=settings,
                  on_epoch_end=lambda row: resumed_epochs.append(row["epoch"]))
    assert resumed_epochs == [2]
    assert resumed["epoch"].tolist() == [1, 2]
    # Same seed, same first-epoch loss; and the resumed second epoch equals the uninterrupted one.
    assert resumed["train_loss"].tolist() == history["train_loss"].tolist()
    assert resumed["val_loss"].tolist() == history["val_loss"].tolist()
    for name, key in (("ckpt/last.pt", "model"), ("ckpt/last.pt", "ema"),
                      ("out/model.pt", "state_dict")):
        a = torch.load(work / name, weights_only=True)
        b = torch.load(tmp_path / name, weights_only=True)
        assert (a[key] is None) == (b[key] is None) == (key == "ema" and not techniques)
        for param in a[key] or {}:
            torch.testing.assert_close(b[key][param], a[key][param], rtol=0, atol=0)


def test_ema_weights_are_validated_and_saved(cutouts, tmp_path):
    # One epoch: the best epoch is the last, so model.pt holds the EMA weights of last.pt.
    run(cutouts, tmp_path, settings={**SETTINGS_2D, "epochs": 1, "ema_decay": 0.5})
    checkpoint = torch.load(tmp_path / "ckpt" / "last.pt", weights_only=True)
    saved = torch.load(tmp_path / "out" / "model.pt", weights_only=True)["state_dict"]
    assert int(checkpoint["ema"]["n_averaged"]) == 3  # 24 samples in batches of 8
    for name, value in saved.items():
        torch.testing.assert_close(value, checkpoint["ema"][f"module.{name}"], rtol=0, atol=0)
    assert any(not torch.equal(value, checkpoint["model"][name]) for name, value in saved.items()
               if value.is_floating_point())


def test_early_stopping_after_patience_epochs(cutouts, tmp_path, monkeypatch):
    flat = {"loss": 1.0, "accuracy": 0.5, "balanced_accuracy": 0.5}
    monkeypatch.setattr(train_module, "evaluate", lambda *args, **kwargs: flat)
    settings = {**SETTINGS_2D, "epochs": 6, "samples_per_epoch": 8, "early_stopping_patience": 2}
    history = run(cutouts, tmp_path, settings=settings)
    assert history["epoch"].tolist() == [1, 2, 3]  # epoch 1 stays best; 2 and 3 do not beat it
    assert torch.load(tmp_path / "out" / "model.pt", weights_only=True)["best_epoch"] == 1
    # A job killed after its last epoch but before it wrote model.pt resumes and stops at once.
    (tmp_path / "out" / "model.pt").unlink()
    (tmp_path / "ckpt" / train_module.FINISHED_NAME).unlink()
    epochs = []
    run(cutouts, tmp_path, settings=settings, on_epoch_end=lambda row: epochs.append(row))
    assert epochs == []
    assert torch.load(tmp_path / "out" / "model.pt", weights_only=True)["best_epoch"] == 1


def test_compile_failure_on_cpu_falls_back_to_eager(cutouts, tmp_path, monkeypatch, caplog):
    def broken_compile(model):
        def compiled(x):
            raise RuntimeError("no C++ compiler")
        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    settings = {**SETTINGS_2D, "epochs": 1, "samples_per_epoch": 8, "compile": True}
    with caplog.at_level("WARNING", logger="synapse_ei.learn.train"):
        history = run(cutouts, tmp_path, settings=settings)
    assert np.isfinite(history["train_loss"]).all()
    assert "torch.compile failed on CPU (RuntimeError: no C++ compiler)" in caplog.text


def test_warmup_then_cosine_schedule():
    factor = warmup_cosine(total_steps=10, warmup_steps=4)
    assert [factor(step) for step in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert factor(7) == pytest.approx(0.5)  # halfway through the cosine part
    assert factor(10) == pytest.approx(0.0)
    no_warmup = warmup_cosine(total_steps=4, warmup_steps=0)
    assert [no_warmup(step) for step in range(3)] == pytest.approx([1.0, 0.5 + 0.5 ** 1.5, 0.5])


@pytest.mark.parametrize(("override", "named"), [
    ({"loss": "hinge"}, "loss"), ({"optimizer": "sgd"}, "optimizer"),
    ({"sampler": "weighted"}, "sampler"), ({"warmup_epochs": 2}, "warmup_epochs"),
    ({"ema_decay": 1.0}, "ema_decay"), ({"mixup": -0.2}, "mixup"),
    ({"sampler": "balanced", "loss": "focal", "focal_alpha": 0.75}, "focal_alpha"),
])
def test_bad_technique_settings_are_named(override, named):
    with pytest.raises(DataError, match=named):
        TrainingSettings.from_config({**SETTINGS_2D, **override})


def test_other_seed_gives_another_first_epoch(cutouts, uninterrupted, tmp_path):
    _, history = uninterrupted
    other = run(cutouts, tmp_path, settings={**SETTINGS_2D, "epochs": 1}, seed=6)
    assert other["train_loss"].iloc[0] != history["train_loss"].iloc[0]


def test_changed_settings_do_not_resume_a_stale_checkpoint(cutouts, tmp_path):
    run(cutouts, tmp_path, settings={**SETTINGS_2D, "epochs": 1})
    epochs = []
    run(cutouts, tmp_path, settings={**SETTINGS_2D, "epochs": 1, "learning_rate": 0.001},
        on_epoch_end=lambda row: epochs.append(row["epoch"]))
    assert epochs == [1]


def test_a_finished_run_is_never_resumed_but_trained_again(cutouts, uninterrupted, tmp_path):
    """A rerun of a finished job (`--forcerun train`) retrains, with the same result."""
    _, history = uninterrupted
    run(cutouts, tmp_path)
    epochs = []
    again = run(cutouts, tmp_path, on_epoch_end=lambda row: epochs.append(row["epoch"]))
    assert epochs == [1, 2]
    assert again["train_loss"].tolist() == history["train_loss"].tolist()


def relabel_two_train_rows(root: Path) -> None:
    """Swap the labels of an inhibitory and an excitatory train row: the same counts."""
    manifest = pd.read_parquet(root / "manifest.parquet")
    train = manifest[manifest["split"] == "train"]
    first = {label: train.index[train["label"] == label][0]
             for label in ("excitatory", "inhibitory")}
    manifest.loc[first["excitatory"], "label"] = "inhibitory"
    manifest.loc[first["inhibitory"], "label"] = "excitatory"
    manifest.to_parquet(root / "manifest.parquet", index=False)


def recut_a_stack_in_place(root: Path) -> None:
    """Other pixels in a stack of the same shape, its modification time kept."""
    stack = root / "shards/000/2d.tif"
    before = stack.stat()
    pixels = np.asarray(stacks.open_stack(stack, "2d"))
    write_stack(stack, "2d", np.clip(pixels.astype(np.int16) + 40, 1, 255).astype(np.uint8))
    os.utime(stack, ns=(before.st_atime_ns, before.st_mtime_ns))


@pytest.mark.parametrize("change", [relabel_two_train_rows, recut_a_stack_in_place],
                         ids=["manifest", "stack"])
def test_an_interrupted_run_on_other_data_is_not_resumed(cutouts, tmp_path, change):
    """Same counts, same settings, other data: the checkpoint of the old data is not resumed."""
    root = tmp_path / "cutouts"
    shutil.copytree(cutouts[0], root)
    copied = (root, root / "manifest.parquet")

    def stop_after_first(row):
        raise Interrupt

    with pytest.raises(Interrupt):
        run(copied, tmp_path, on_epoch_end=stop_after_first)
    change(root)
    epochs = []
    run(copied, tmp_path, on_epoch_end=lambda row: epochs.append(row["epoch"]))
    assert epochs == [1, 2]


def test_3d_model_trains_on_a_sample_of_cubes(cutouts, tmp_path):
    root, manifest = cutouts
    settings = {"epochs": 1, "batch_size": 4, "samples_per_epoch": 8}
    history = run(cutouts, tmp_path, settings=settings, architecture="r3d_18")
    assert history["epoch"].tolist() == [1]
    # 8 of the 24 training cubes were drawn; the epoch finished with finite losses.
    assert np.isfinite(history[["train_loss", "val_loss"]]).all().all()
    predictions = predict_cutouts(tmp_path / "out" / "model.pt", manifest, root, ("val",),
                                  device="cpu")
    assert len(predictions) == 8 and predictions["prob_inhibitory"].between(0, 1).all()


def test_class_weights_are_inverse_frequencies():
    weights = class_weights(np.array([0, 0, 0, 1]))
    torch.testing.assert_close(weights, torch.tensor([4 / 6, 4 / 2]))
    with pytest.raises(DataError, match="inhibitory"):
        class_weights(np.array([0, 0, 0]))


def test_nan_loss_stops_naming_epoch_and_batch(cutouts, tmp_path, monkeypatch):
    real_build = train_module.build_model

    def nan_model(architecture, num_classes=2, **options):
        model = real_build(architecture, num_classes, **options)
        model.fc.register_forward_hook(lambda module, args, out: out * float("nan"))
        return model

    monkeypatch.setattr(train_module, "build_model", nan_model)
    with pytest.raises(RuntimeError, match=r"epoch 1, batch 0"):
        run(cutouts, tmp_path)
    assert not (tmp_path / "out" / "model.pt").exists()


def test_augmenting_on_the_device_trains_from_raw_uint8_batches(cutouts, tmp_path, monkeypatch):
    """augment_on: device keeps the loader's batches raw uint8 and augments each sample after
    the copy to the device (the CPU here stands in for the GPU)."""
    seen = []
    original = transforms.to_model_input

    def spy(x, device, memory_format=None, transform=None):
        seen.append((x.dtype, transform is not None))
        return original(x, device, memory_format, transform)

    monkeypatch.setattr(transforms, "to_model_input", spy)
    history = run(cutouts, tmp_path, settings={**SETTINGS_2D, "augment_on": "device"})
    assert np.isfinite(history["train_loss"]).all()
    # Training batches arrive as uint8 with the transform to apply; validation ones without.
    assert (torch.uint8, True) in seen and (torch.uint8, False) in seen
    assert all(dtype == torch.uint8 for dtype, _ in seen)


def test_device_augmentation_draws_each_sample_its_own_transform():
    same = torch.full((4, 1, 32, 32), 128, dtype=torch.uint8)
    same[:, :, 10:20, 5:9] = 250  # an asymmetric bar: every flip or rotation moves it
    transform = transforms.build_transforms("2d", train=True, strength=0.0)
    torch.manual_seed(0)
    x = transforms.to_model_input(same, torch.device("cpu"), transform=transform)
    assert x.shape == same.shape and x.dtype == torch.float32
    assert len({tuple(item.flatten().tolist()) for item in x}) > 1
    plain = transforms.to_model_input(same, torch.device("cpu"))
    torch.testing.assert_close(plain[0, 0, 0, 0], torch.tensor((128 / 255 - transforms.NORM_MEAN)
                                                               / transforms.NORM_STD))


def test_bad_settings_name_the_model_before_training(cutouts, tmp_path):
    with pytest.raises(DataError, match=r"models\.small: setting 'epochs' is 0"):
        run(cutouts, tmp_path, settings={**SETTINGS_2D, "epochs": 0}, name="small")
    assert not (tmp_path / "ckpt").exists()


@pytest.mark.parametrize("check_every", [1, 20], ids=["every-batch", "deferred"])
def test_an_exploding_loss_stops_training_naming_its_batch(cutouts, tmp_path, monkeypatch,
                                                           check_every):
    """The losses are read every FINITE_CHECK_EVERY batches (reading one waits for the GPU),
    yet the error names the first batch whose loss is not finite, as a check of every batch
    does, and no model is written."""
    monkeypatch.setattr(train_module, "FINITE_CHECK_EVERY", check_every)
    settings = {**SETTINGS_2D, "learning_rate": 1.0e30, "epochs": 1}
    with pytest.raises(RuntimeError, match=r"cnn2d: loss is (nan|inf) at epoch 1, batch 1;"):
        run(cutouts, tmp_path, settings=settings)
    assert not (tmp_path / "out" / "model.pt").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("architecture, kind", [("cnn2d", "2d"), ("r3d_18", "3d")])
def test_on_the_gpu_a_training_epoch_waits_for_the_device_only_at_its_end(
        architecture, kind, tmp_path, monkeypatch):
    """Every technique at once (device augmentation, MixUp/CutMix, focal loss, balanced sampler,
    EMA): no step of an epoch makes the host wait for the GPU, so the host queues the next step
    while the last one runs; only the end of the epoch reads the device (its finite check, the
    losses and predictions). The first epoch warms up (cuDNN's choices, allocations)."""
    manifest = write_learnable_cutouts(tmp_path)
    settings = TrainingSettings.from_config({**TECHNIQUES_2D, "augment_on": "device",
                                             "batch_size": 4})
    device = torch.device("cuda")
    data = train_module.load_data(manifest, tmp_path, kind, settings, device)
    loader, _, per_epoch = train_module.make_loaders(data, settings, 0, 0, device)
    training = train_module.build_training(architecture, settings, data.train_set.labels,
                                           len(loader), device, kind)

    def epoch(number: int) -> train_module.EpochResult:
        return train_module.train_one_epoch(training, loader, settings, device, data, number,
                                            architecture, tmp_path / "last.pt")

    epoch(1)
    real_check = train_module._check_finite

    def check_at_the_end(*args):
        torch.cuda.set_sync_debug_mode("default")
        real_check(*args)

    monkeypatch.setattr(train_module, "FINITE_CHECK_EVERY", 10**6)
    monkeypatch.setattr(train_module, "_check_finite", check_at_the_end)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        result = epoch(2)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert result.seen == per_epoch and np.isfinite(result.loss_sum)
