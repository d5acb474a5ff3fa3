"""Training loop for the image models, after torchvision's reference classification train.py.

AdamW or Adam, a per-step cosine learning-rate schedule after an optional linear warm-up, gradient
clipping, best-by-validation-balanced-accuracy weights. The data are ~15 % inhibitory: the loss
(:mod:`synapse_ei.learn.losses`) weights the classes, or a balanced sampler shows them equally often
with an unweighted loss. Optional MixUp/CutMix (:mod:`synapse_ei.learn.augment`), an EMA of the
weights (:mod:`synapse_ei.learn.ema`), ``torch.compile`` and early stopping. A checkpoint
``last.pt`` written atomically after every epoch (model, optimizer, scheduler, EMA, best weights,
history and every random state, the sampler's included) lets a killed job resume where it stopped
with the same result as an uninterrupted run; only that: a checkpoint of other data or settings, or
of a run that finished, is never resumed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

import synapse_ei
from synapse_ei.config import plain
from synapse_ei.errors import DataError
from synapse_ei.learn import augment, dataset, distributed, losses, transforms
from synapse_ei.learn.device import autocast_for, memory_format, resolve_device, to_device
from synapse_ei.learn.distributed import World
from synapse_ei.learn.ema import build_ema
from synapse_ei.learn.models import build_model, input_kind, model_options
from synapse_ei.learn.settings import TrainingSettings
from synapse_ei.outputs import atomic_path, write_json
from synapse_ei.tables import LABELS

log = logging.getLogger(__name__)


OPTIMIZERS = ("adamw", "adam")
#: Preload cutouts into memory when they take less than this (the demo: a few MB).
PRELOAD_MAX_BYTES = 1 << 30
HISTORY_COLUMNS = [
    "epoch", "train_loss", "train_accuracy", "train_balanced_accuracy", "val_loss", "val_accuracy",
    "val_balanced_accuracy", "lr", "seconds", "samples_per_second",
]
CHECKPOINT_FORMAT = 3
#: Beside ``last.pt``: the id of the run that finished after writing it (it is never resumed).
FINISHED_NAME = "finished.json"
#: Bytes of each stack read into the data digest of a checkpoint (the TIFF header and more).
_HEAD_BYTES = 64 * 1024


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def class_weights(labels: np.ndarray, num_classes: int = 2) -> torch.Tensor:
    """Weights inversely proportional to class frequency: ``n / (num_classes * n_c)``."""
    return losses.inverse_frequency_weights(np.bincount(labels, minlength=num_classes))


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    # Plain tensors and ints only, so the checkpoint loads with torch.load(weights_only=True).
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": [version, list(internal), gauss],
        "loader": generator.get_state(),
    }


def _restore_rng(state: Mapping[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy = state["numpy"]
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    generator.set_state(state["loader"])


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Learning-rate factor per optimizer step: linear warm-up to 1, then cosine down to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def build_optimizer(name: str, model: nn.Module, learning_rate: float,
                    weight_decay: float) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay) or Adam (weight decay as an L2 term in the gradient)."""
    optimizer = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    return optimizer(model.parameters(), lr=learning_rate, weight_decay=weight_decay)


def compile_for_training(model: nn.Module, device: torch.device,
                         architecture: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """``torch.compile(model)`` for the training steps (validation stays eager).

    Compiling happens at the first call. On CPU, where it needs a working C++ toolchain, a
    failure logs a line and training goes on eagerly; on CUDA it is an error.
    """
    compiled = torch.compile(model)
    current: list[Callable[[torch.Tensor], torch.Tensor]] = [compiled]

    def forward(x: torch.Tensor) -> torch.Tensor:
        if current[0] is model or device.type == "cuda":
            return current[0](x)
        try:
            return compiled(x)
        except Exception as error:  # inductor raises many types; the eager model is the fallback
            log.warning("%s: torch.compile failed on CPU (%s: %s); training without it",
                        architecture, type(error).__name__, str(error).splitlines()[0][:200])
            current[0] = model
            return model(x)

    return forward


def _stopped_early(history: list[dict[str, Any]], best_epoch: int, patience: int | None) -> bool:
    return patience is not None and bool(history) and history[-1]["epoch"] - best_epoch >= patience


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, weights: torch.Tensor, device: torch.device, kind: str
) -> dict[str, float]:
    """Class-weighted loss, accuracy and balanced accuracy of ``model`` over ``loader``.
    The sums and predictions stay on the device until the end (a host read a batch would make
    the host wait for each batch's forward pass before queueing the next)."""
    model.eval()
    weights = weights.to(device)
    losses, weight_sums, truths, predictions = [], [], [], []
    for x, y in loader:
        truths.append(y.numpy())  # the loader's labels, on the CPU already
        x, y = to_device(x, device, kind), y.to(device, non_blocking=True)
        with autocast_for(device):
            logits = model(x)
        logits = logits.float()
        losses.append(F.cross_entropy(logits, y, weight=weights, reduction="sum"))
        weight_sums.append(weights[y].sum())
        predictions.append(logits.argmax(dim=1))
    truth, predicted = np.concatenate(truths), torch.cat(predictions).cpu().numpy()
    # Summed in double on the host, as the per-batch floats were before.
    loss_sum = float(torch.stack(losses).cpu().double().sum())
    weight_sum = float(torch.stack(weight_sums).cpu().double().sum())
    return {
        "loss": loss_sum / weight_sum,
        "accuracy": float(accuracy_score(truth, predicted)),
        "balanced_accuracy": float(balanced_accuracy_score(truth, predicted)),
    }


def data_digest(rows: pd.DataFrame, root: Path, kind: str) -> str:
    """A digest of the cutouts ``rows`` (manifest rows) lists: every column of every row and,
    for each stack, its size, modification time and first 64 KiB (header and first cutouts).

    Cheap (no stack is read whole) and enough to tell a checkpoint's data from new data with
    the same counts: corrected positions or labels change the rows; a stack cut again (the EM
    re-created in place, another mip) is a new file.
    """
    digest = hashlib.sha256(repr(list(rows.columns)).encode())
    try:
        hashed = pd.util.hash_pandas_object(rows, index=False)
    except TypeError:  # a column of lists or other unhashable values
        hashed = pd.util.hash_pandas_object(rows.astype(str), index=False)
    digest.update(hashed.to_numpy().tobytes())
    for name in sorted(rows[f"path_{kind}"].astype(str).unique()):
        path = root / name
        stat = path.stat()
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
        with open(path, "rb") as file:
            digest.update(file.read(_HEAD_BYTES))
    return digest.hexdigest()


def _fingerprint(architecture: str, settings: TrainingSettings, seed: int, shape: tuple[int, ...],
                 n_train: int, n_val: int, digest: str) -> dict[str, Any]:
    return {"architecture": architecture, "settings": settings.as_dict(), "seed": int(seed),
            "shape": list(shape), "n_train": n_train, "n_val": n_val, "data": digest,
            "code": synapse_ei.__version__}


def _load_checkpoint(path: Path, fingerprint: Mapping[str, Any]) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if an unfinished run of this exact configuration and data
    wrote it, else None (start fresh).

    A run that finished (wrote model.pt) is never resumed: Snakemake deletes model.pt before it
    reruns the job, so a finished checkpoint means the job was rerun on purpose (``--forcerun``,
    or inputs Snakemake sees as changed), never that it was interrupted.
    """
    if not path.is_file():
        return None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a damaged file must not stop a fresh start
        log.warning("checkpoint %s is unreadable (%s); training from scratch", path, error)
        return None
    same_run = checkpoint.get("fingerprint") == fingerprint
    if checkpoint.get("format") != CHECKPOINT_FORMAT or not same_run:
        log.warning("checkpoint %s is from another configuration or data; training from scratch",
                    path)
        return None
    if _finished_run(path.parent) == checkpoint["run"]:
        log.info("checkpoint %s is of a run that finished (it wrote model.pt); training from "
                 "scratch", path)
        return None
    return checkpoint


def _finished_run(checkpoint_dir: Path) -> str | None:
    """The id of the run whose checkpoint in ``checkpoint_dir`` went on to write model.pt."""
    marker = checkpoint_dir / FINISHED_NAME
    try:
        return str(json.loads(marker.read_text())["run"])
    except (OSError, ValueError, KeyError, TypeError):  # none yet, or a damaged marker
        return None


@dataclass
class TrainingData:
    """The cutouts of one training run: the two splits, their shape, and where augmentation runs."""

    kind: str
    root: Path
    shape: tuple[int, ...]
    train_rows: pd.DataFrame
    val_rows: pd.DataFrame
    train_set: dataset.CutoutDataset
    val_set: dataset.CutoutDataset
    #: The augmentation applied on the device to whole batches; None when the loader applies it.
    device_transform: Callable[[torch.Tensor], torch.Tensor] | None
    #: Inverse class frequencies of the train split (the validation loss weighs by them).
    weights: torch.Tensor


def load_data(manifest_path: str | Path, cutout_root: str | Path, kind: str,
              settings: TrainingSettings, device: torch.device) -> TrainingData:
    """The manifest's train and val cutouts of ``kind``, preloaded into memory when small."""
    train_rows = dataset.load_manifest(manifest_path, "train", kind)
    val_rows = dataset.load_manifest(manifest_path, "val", kind)
    root = Path(cutout_root)
    shape = dataset.stored_shape(root / str(train_rows[f"path_{kind}"].iloc[0]), kind)
    preload = (len(train_rows) + len(val_rows)) * math.prod(shape) <= PRELOAD_MAX_BYTES
    transform = transforms.build_transforms(kind, True, settings.augment_strength,
                                            settings.augmentations)
    on_device = settings.augment_on == "device" or (
        settings.augment_on == "auto" and device.type == "cuda")
    train_set = dataset.CutoutDataset(train_rows, root, kind, None if on_device else transform,
                                      shape=shape, preload=preload)
    val_set = dataset.CutoutDataset(val_rows, root, kind, None, shape=shape, preload=preload)
    return TrainingData(kind, root, shape, train_rows, val_rows, train_set, val_set,
                        transform if on_device else None, class_weights(train_set.labels))


def make_loaders(data: TrainingData, settings: TrainingSettings, seed: int, num_workers: int,
                 device: torch.device, world: World = World(),
                 ) -> tuple[DataLoader, DataLoader, int]:
    """The train loader (``samples_per_epoch`` a pass, sampler of the settings; this process's
    share of each batch), the val loader and the number of train samples an epoch."""
    batch_size = settings.batch_size
    per_epoch = min(settings.samples_per_epoch or len(data.train_set), len(data.train_set))
    train_loader = dataset.make_loader(
        data.train_set, batch_size, seed, shuffle=True, num_workers=num_workers,
        num_samples=per_epoch,
        # BatchNorm cannot train on a final batch of one sample (on any of the processes).
        drop_last=0 < per_epoch % batch_size < max(2, world.size),
        pin_memory=device.type == "cuda", sampler=settings.sampler,
    )
    if world.size > 1:
        train_loader = distributed.shard_loader(train_loader, world)
    val_loader = dataset.make_loader(data.val_set, batch_size, seed + 1, shuffle=False,
                                     num_workers=num_workers, pin_memory=device.type == "cuda")
    return train_loader, val_loader, per_epoch


@dataclass
class Training:
    """The model and everything a training step updates."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    criterion: nn.Module
    ema: Any
    #: What validation, the best weights and model.pt use: the EMA's copy when there is one.
    scored: nn.Module
    #: The training steps' forward (compiled or the model itself).
    forward: Callable[[torch.Tensor], torch.Tensor]


def build_training(architecture: str, settings: TrainingSettings, train_labels: np.ndarray,
                   steps_per_epoch: int, device: torch.device, kind: str,
                   world: World = World()) -> Training:
    """Model, optimizer, per-step schedule, loss and EMA of ``settings`` on ``device``; with
    several processes the training steps run a DDP copy (gradients averaged over them)."""
    model = build_model(architecture, num_classes=len(LABELS), **model_options(settings))
    if world.size > 1 and device.type == "cuda":
        # Batch statistics over the global batch, as one process computes them.
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=memory_format(device, kind))
    optimizer = build_optimizer(settings.optimizer, model, settings.learning_rate,
                                settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(
        settings.epochs * steps_per_epoch, settings.warmup_epochs * steps_per_epoch))
    criterion = losses.build_loss(
        settings.loss, np.bincount(train_labels, minlength=len(LABELS)),
        balanced_sampler=settings.sampler == "balanced", focal_gamma=settings.focal_gamma,
        focal_alpha=settings.focal_alpha, cb_beta=settings.cb_beta,
    ).to(device)
    ema = build_ema(model, settings.ema_decay) if settings.ema_decay else None
    scored = ema.module if ema is not None else model
    stepped = model
    if world.size > 1:
        stepped = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    forward = (compile_for_training(stepped, device, architecture) if settings.compile
               else stepped)
    return Training(model, optimizer, scheduler, criterion, ema, scored, forward)


def _cpu_weights(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


@dataclass
class Progress:
    """Where a run stands: its id, the finished epochs' history and the best epoch so far."""

    run_id: str
    best_state: dict[str, torch.Tensor]
    history: list[dict[str, Any]] = field(default_factory=list)
    best_score: float = -math.inf
    best_epoch: int = 0

    @property
    def epoch(self) -> int:
        """The last finished epoch (0 before the first)."""
        return int(self.history[-1]["epoch"]) if self.history else 0

    def record(self, row: dict[str, Any], scored: nn.Module) -> None:
        """Append an epoch's history row; keep ``scored``'s weights if it is the best yet."""
        self.history.append(row)
        if row["val_balanced_accuracy"] > self.best_score:
            self.best_score, self.best_epoch = row["val_balanced_accuracy"], row["epoch"]
            self.best_state = _cpu_weights(scored)


def save_checkpoint(path: Path, fingerprint: Mapping[str, Any], training: Training,
                    progress: Progress, rng: Any) -> None:
    """``last.pt``, atomically: all a resume needs to go on as if never stopped (``rng``: the
    random states, :func:`_rng_state`; with several processes, theirs in rank order)."""
    with atomic_path(path) as tmp:
        torch.save({
            "format": CHECKPOINT_FORMAT,
            "fingerprint": fingerprint,
            "run": progress.run_id,
            "epoch": progress.epoch,
            "model": training.model.state_dict(),
            "optimizer": training.optimizer.state_dict(),
            "scheduler": training.scheduler.state_dict(),
            "ema": training.ema.state_dict() if training.ema is not None else None,
            "history": progress.history,
            "best_score": progress.best_score,
            "best_epoch": progress.best_epoch,
            "best_state": progress.best_state,
            "rng": rng,
        }, tmp)


def resume(checkpoint: Mapping[str, Any], training: Training, generator: torch.Generator,
           world: World = World()) -> Progress:
    """Load a checkpoint (of :func:`_load_checkpoint`) into ``training`` and the RNGs (this
    process's); its progress."""
    training.model.load_state_dict(checkpoint["model"])
    training.optimizer.load_state_dict(checkpoint["optimizer"])
    training.scheduler.load_state_dict(checkpoint["scheduler"])
    if training.ema is not None:
        training.ema.load_state_dict(checkpoint["ema"])
    _restore_rng(checkpoint["rng"][world.rank] if world.size > 1 else checkpoint["rng"],
                 generator)
    return Progress(checkpoint["run"], checkpoint["best_state"], list(checkpoint["history"]),
                    checkpoint["best_score"], checkpoint["best_epoch"])


def augmented_batch(x: torch.Tensor, y: torch.Tensor, settings: TrainingSettings,
                    device: torch.device, kind: str,
                    device_transform: Callable[[torch.Tensor], torch.Tensor] | None,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A loaded batch on ``device``, augmented there (``device_transform``) and mixed (MixUp/
    CutMix): the model input, the labels and the (soft) targets. The one call into
    augmentation of the training steps."""
    x, y = to_device(x, device, kind, device_transform), y.to(device, non_blocking=True)
    x, target = augment.mix_batch(x, losses.one_hot(y, len(LABELS)), settings.mixup,
                                  settings.cutmix)
    return x, y, target


# Batches between the checks that the loss is finite. Reading a loss on the host waits for the
# GPU to finish its step, so a check every batch (before the backward pass) kept the host from
# queueing the next step while the GPU worked; a NaN is still caught within this many steps.
FINITE_CHECK_EVERY = 20


@dataclass
class EpochResult:
    """A training epoch's summed loss, sample count, labels and predictions (as trained)."""

    loss_sum: float
    seen: int
    truth: np.ndarray
    predicted: np.ndarray
    seconds: float


def _check_finite(batch_losses: list[torch.Tensor], first: int, architecture: str, epoch: int,
                  checkpoint_path: Path) -> None:
    """Raise if a loss of ``batch_losses`` (batches ``first``, ``first + 1``, ... of ``epoch``,
    on the device) is not finite, naming the first such batch."""
    if not batch_losses:
        return
    values = torch.stack(batch_losses)
    bad = torch.nonzero(~torch.isfinite(values)).flatten().tolist()  # one wait for the device
    if bad:
        raise RuntimeError(
            f"{architecture}: loss is {values[bad[0]].item()} at epoch {epoch}, batch "
            f"{first + bad[0]}; stopped. {checkpoint_path} keeps the last good epoch. Lower "
            "the learning_rate or check the cutouts for corrupt values."
        )


def train_one_epoch(training: Training, loader: DataLoader, settings: TrainingSettings,
                    device: torch.device, data: TrainingData, epoch: int, architecture: str,
                    checkpoint_path: Path) -> EpochResult:
    """One pass over ``loader``: a clipped optimizer step, schedule step and EMA update a batch.
    Losses and predictions stay on the device until the end (the finite check reads them every
    :data:`FINITE_CHECK_EVERY` batches), so the host queues each step while the last one runs."""
    training.model.train()
    started = time.perf_counter()
    seen, checked = 0, 0
    truths, predictions, batch_losses = [], [], []
    batches = tqdm(loader, desc=f"{architecture} epoch {epoch}/{settings.epochs}",
                   unit="batch", leave=False, disable=not sys.stderr.isatty())
    for batch, (x, y) in enumerate(batches):
        truths.append(y.numpy())  # the loader's labels, on the CPU already
        x, y, target = augmented_batch(x, y, settings, device, data.kind, data.device_transform)
        with autocast_for(device):
            logits = training.forward(x)
        loss = training.criterion(logits.float(), target)
        training.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(training.model.parameters(), settings.grad_clip)
        training.optimizer.step()
        training.scheduler.step()
        if training.ema is not None:
            training.ema.update_parameters(training.model)
        batch_losses.append(loss.detach())
        seen += len(y)
        predictions.append(logits.detach().argmax(dim=1))
        if batch + 1 - checked == FINITE_CHECK_EVERY:
            _check_finite(batch_losses[checked:], checked, architecture, epoch, checkpoint_path)
            checked = batch + 1
    _check_finite(batch_losses[checked:], checked, architecture, epoch, checkpoint_path)
    sizes = torch.tensor([len(t) for t in truths], dtype=torch.float64)
    loss_sum = (float(torch.stack(batch_losses).double().cpu() @ sizes) if batch_losses
                else 0.0)
    predicted = (torch.cat(predictions).cpu().numpy() if predictions
                 else np.array([], dtype=np.int64))
    truth = np.concatenate(truths) if truths else np.array([], dtype=np.int64)
    return EpochResult(loss_sum, seen, truth, predicted, time.perf_counter() - started)


def history_row(epoch: int, result: EpochResult, scores: Mapping[str, float], lr: float,
                seconds: float) -> dict[str, Any]:
    """An epoch's row of history.csv (:data:`HISTORY_COLUMNS`)."""
    # On the augmented (and mixed) batches as trained, against each cutout's own label.
    return {
        "epoch": epoch,
        "train_loss": result.loss_sum / max(result.seen, 1),
        "train_accuracy": float(accuracy_score(result.truth, result.predicted)),
        "train_balanced_accuracy": float(balanced_accuracy_score(result.truth, result.predicted)),
        "val_loss": scores["loss"],
        "val_accuracy": scores["accuracy"],
        "val_balanced_accuracy": scores["balanced_accuracy"],
        "lr": lr,
        "seconds": seconds,
        "samples_per_second": (result.seen / result.seconds if result.seconds > 0
                               else float("nan")),
    }


def save_model(out_dir: Path, architecture: str, data: TrainingData, settings: TrainingSettings,
               progress: Progress, seed: int) -> pd.DataFrame:
    """``model.pt`` (the best epoch's weights and what inference needs) and ``history.csv``."""
    frame = pd.DataFrame(progress.history, columns=HISTORY_COLUMNS)
    with atomic_path(out_dir / "model.pt") as tmp:
        torch.save({
            "architecture": architecture,
            "input_kind": data.kind,
            "state_dict": progress.best_state,
            "settings": settings.as_dict(),
            "normalisation": {
                "scale": 255.0, "mean": transforms.NORM_MEAN, "std": transforms.NORM_STD,
            },
            "cutout_shape": list(data.shape),
            "class_names": list(LABELS),
            "best_epoch": progress.best_epoch,
            "best_val_balanced_accuracy": progress.best_score,
            "seed": int(seed),
        }, tmp)
    with atomic_path(out_dir / "history.csv") as tmp:
        frame.to_csv(tmp, index=False)
    return frame


def _log_epoch(architecture: str, epochs: int, row: Mapping[str, Any]) -> None:
    log.info(
        "%s epoch %d/%d: train_loss %.4f val_loss %.4f val_acc %.3f val_bacc %.3f lr %.2e "
        "%.1f s (%.1f samples/s)", architecture, row["epoch"], epochs, row["train_loss"],
        row["val_loss"], row["val_accuracy"], row["val_balanced_accuracy"], row["lr"],
        row["seconds"], row["samples_per_second"],
    )


def _image_kind(architecture: str) -> str:
    kind = input_kind(architecture)
    if kind not in transforms.KINDS:
        raise DataError(f"models: {architecture!r} reads {kind}, not images; train it with "
                        "synapse_ei.connectivity.")
    return kind


def _on_device(device: torch.device, threads: int | None) -> None:
    if threads is not None:
        torch.set_num_threads(int(threads))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its kernels


def over_ranks(result: EpochResult, world: World) -> EpochResult:
    """An epoch of every process as one: summed loss and samples, all labels and predictions
    (what one process training on the global batches records)."""
    if world.size == 1:
        return result
    loss_sum, seen = distributed.sum_over_ranks(result.loss_sum, result.seen)
    parts = distributed.gather((result.truth, result.predicted), world)
    return EpochResult(loss_sum, int(seen), np.concatenate([truth for truth, _ in parts]),
                       np.concatenate([predicted for _, predicted in parts]), result.seconds)


def validate(training: Training, loader: DataLoader, data: TrainingData, device: torch.device,
             world: World) -> dict[str, float]:
    """:func:`evaluate` of the scored weights on the val split; with several processes rank 0
    validates and tells the others, so all take the same best-epoch and stopping decisions."""
    scores = evaluate(training.scored, loader, data.weights, device, data.kind) \
        if world.main else None
    if world.size > 1:
        shared = [scores]
        torch.distributed.broadcast_object_list(shared, src=0)
        scores = shared[0]
    return scores


def train_image_model(
    manifest_path: str | Path,
    cutout_root: str | Path,
    architecture: str,
    settings: Mapping | TrainingSettings,
    out_dir: str | Path,
    checkpoint_dir: str | Path,
    seed: int,
    device: str = "auto",
    num_workers: int = 0,
    threads: int | None = None,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    name: str | None = None,
) -> pd.DataFrame:
    """Train ``architecture`` on the manifest's train split, validating on val every epoch.

    Writes ``out_dir/model.pt`` (best-epoch weights and everything :mod:`synapse_ei.learn.inference`
    needs) and ``out_dir/history.csv`` (one row per epoch). ``checkpoint_dir/last.pt`` is
    rewritten after every epoch; if it exists for the same configuration and data (the
    manifest's rows and the stacks, :func:`data_digest`) and its run did not finish, training
    resumes after its epoch (an interrupted job); otherwise training starts from scratch.
    ``on_epoch_end`` receives each epoch's history row (after the checkpoint is saved).
    Returns the history.

    With ``gpus: N`` (N > 1) in ``settings``, N processes train data-parallel, one per GPU (on
    a CPU ``device``, N CPU processes with the gloo backend), each on 1/N of every batch
    (:mod:`synapse_ei.learn.distributed`); ``on_epoch_end`` then runs in rank 0's process and
    must pickle. ``threads`` is each process's intra-op CPU threads, so the job uses N times
    them (the train rule asks Slurm for that many CPUs).

    ``settings`` is the model's config entry (validated by :meth:`TrainingSettings.from_config`;
    its errors name ``models.<name>``) or :class:`TrainingSettings`.
    """
    kind = _image_kind(architecture)
    if not isinstance(settings, TrainingSettings):
        settings = TrainingSettings.from_config(
            plain(settings), where=f"models.{name}" if name else "models")
    torch_device = resolve_device(device)
    arguments = dict(
        manifest_path=manifest_path, cutout_root=cutout_root, architecture=architecture,
        kind=kind, settings=settings, out_dir=Path(out_dir),
        checkpoint_path=Path(checkpoint_dir) / "last.pt", seed=seed, num_workers=num_workers,
        on_epoch_end=on_epoch_end,
    )
    gpus = settings.gpus
    if gpus == 1:
        return run_training(world=World(), device=torch_device, threads=threads, **arguments)
    distributed.check_processes(gpus, settings.batch_size, torch_device, architecture)
    return distributed.launch(run_training, gpus, torch_device, threads=threads, **arguments)


def run_training(
    manifest_path: str | Path, cutout_root: str | Path, architecture: str, kind: str,
    settings: TrainingSettings, out_dir: Path, checkpoint_path: Path, seed: int,
    num_workers: int, threads: int | None,
    on_epoch_end: Callable[[dict[str, Any]], None] | None, world: World, device: torch.device,
) -> pd.DataFrame:
    """The training of :func:`train_image_model` in one of ``world.size`` processes (resolved
    settings); rank 0 writes the checkpoints, model.pt and the history."""
    _on_device(device, threads)
    data = load_data(manifest_path, cutout_root, kind, settings, device)
    seed_everything(seed)
    train_loader, val_loader, per_epoch = make_loaders(data, settings, seed, num_workers, device,
                                                       world)
    training = build_training(architecture, settings, data.train_set.labels, len(train_loader),
                              device, kind, world)
    if world.size > 1:  # the same weights everywhere, but each process its own dropout draws
        seed_everything(seed + 7919 * world.rank)
    fingerprint = _fingerprint(
        architecture, settings, seed, data.shape, len(data.train_set), len(data.val_set),
        data_digest(pd.concat([data.train_rows, data.val_rows], ignore_index=True), data.root,
                    kind))
    progress = Progress(uuid.uuid4().hex, _cpu_weights(training.scored))
    checkpoint = _load_checkpoint(checkpoint_path, fingerprint)
    if checkpoint is not None:
        progress = resume(checkpoint, training, train_loader.generator, world)
        log.info("%s: resuming from %s after epoch %d of %d", architecture, checkpoint_path,
                 progress.epoch, settings.epochs)
    log.info("%s: %d train (%d per epoch), %d val %s cutouts of shape %s on %s, augmented in "
             "the %s", architecture, len(data.train_set), per_epoch, len(data.val_set), kind,
             data.shape, device, "loader" if data.device_transform is None else "device")

    for epoch in range(progress.epoch + 1, settings.epochs + 1):
        if _stopped_early(progress.history, progress.best_epoch,
                          settings.early_stopping_patience):
            log.info("%s: stopping early after epoch %d: no better val balanced accuracy than "
                     "epoch %d's in %d epochs", architecture, progress.epoch,
                     progress.best_epoch, settings.early_stopping_patience)
            break
        lr = training.optimizer.param_groups[0]["lr"]
        started = time.perf_counter()
        result = over_ranks(train_one_epoch(training, train_loader, settings, device, data,
                                            epoch, architecture, checkpoint_path), world)
        scores = validate(training, val_loader, data, device, world)
        row = history_row(epoch, result, scores, lr, time.perf_counter() - started)
        progress.record(row, training.scored)
        rng = _rng_state(train_loader.generator)
        rng = distributed.gather(rng, world) if world.size > 1 else rng
        if world.main:
            save_checkpoint(checkpoint_path, fingerprint, training, progress, rng)
            _log_epoch(architecture, settings.epochs, row)
            if on_epoch_end is not None:
                on_epoch_end(row)
    if not world.main:
        return pd.DataFrame(progress.history, columns=HISTORY_COLUMNS)
    frame = save_model(out_dir, architecture, data, settings, progress, seed)
    write_json(checkpoint_path.parent / FINISHED_NAME,
               {"run": progress.run_id, "model": str(out_dir / "model.pt")})
    log.info("%s: best epoch %d (val balanced accuracy %.3f); wrote %s", architecture,
             progress.best_epoch, progress.best_score, out_dir / "model.pt")
    return frame
