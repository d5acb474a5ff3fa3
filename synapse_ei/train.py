"""Training loop for the image models, after torchvision's reference classification train.py.

AdamW, a per-step cosine learning-rate schedule, class-weighted cross-entropy (the data are
~15 % inhibitory), gradient clipping, best-by-validation-balanced-accuracy weights. A checkpoint
``last.pt`` written atomically after every epoch lets a killed job resume where it stopped with
the same result as an uninterrupted run.
"""

from __future__ import annotations

import logging
import math
import random
import sys
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
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

from synapse_ei import data
from synapse_ei.errors import DataError
from synapse_ei.io import atomic_path
from synapse_ei.models import build_model, input_kind
from synapse_ei.tables import LABELS

log = logging.getLogger(__name__)

#: Used for any key missing from a model's config entry.
DEFAULT_SETTINGS: dict[str, Any] = {
    "epochs": 10,
    "batch_size": 32,
    "learning_rate": 1e-3,
    "weight_decay": 1e-4,
    "samples_per_epoch": None,
    "grad_clip": 1.0,
    "augment_strength": 1.0,
}
#: Preload cutouts into memory when they take less than this (the demo: a few MB).
PRELOAD_MAX_BYTES = 1 << 30
HISTORY_COLUMNS = [
    "epoch", "train_loss", "val_loss", "val_accuracy", "val_balanced_accuracy", "lr", "seconds",
    "samples_per_second",
]
CHECKPOINT_FORMAT = 1


def resolve_settings(settings: Mapping | None) -> dict[str, Any]:
    """The model's config entry merged over :data:`DEFAULT_SETTINGS`, as plain Python values."""
    merged = dict(DEFAULT_SETTINGS)
    merged.update({str(key): value for key, value in dict(settings or {}).items()})
    for key in ("epochs", "batch_size"):
        if int(merged[key]) < 1:
            raise DataError(f"models: setting '{key}' is {merged[key]!r}; it must be >= 1.")
        merged[key] = int(merged[key])
    for key in ("learning_rate", "weight_decay", "grad_clip", "augment_strength"):
        merged[key] = float(merged[key])
    if merged["samples_per_epoch"] is not None:
        merged["samples_per_epoch"] = int(merged["samples_per_epoch"])
        if merged["samples_per_epoch"] < 1:
            raise DataError("models: setting 'samples_per_epoch' must be >= 1 (or left out).")
    return merged


def resolve_device(device: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; an explicit 'cuda' without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DataError(
            f"train.device is {device!r} but no CUDA GPU is visible; use 'auto' or 'cpu'."
        )
    return resolved


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def class_weights(labels: np.ndarray, num_classes: int = 2) -> torch.Tensor:
    """Weights inversely proportional to class frequency: ``n / (num_classes * n_c)``."""
    counts = np.bincount(labels, minlength=num_classes)
    if (counts == 0).any():
        missing = [LABELS[i] for i in np.flatnonzero(counts == 0)]
        raise DataError(
            f"training split has no {missing} cutouts: a classifier needs both classes. Check the "
            "split and cutout stages (more data or another split seed)."
        )
    return torch.tensor(len(labels) / (num_classes * counts), dtype=torch.float32)


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


def autocast_for(device: torch.device) -> Any:
    """bf16 autocast on CUDA (tensor cores, no loss scaling needed); a no-op on CPU."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


def _memory_format(kind: str) -> torch.memory_format:
    return torch.channels_last if kind == "2d" else torch.channels_last_3d


def to_device(x: torch.Tensor, device: torch.device, kind: str) -> torch.Tensor:
    """Move a batch to ``device``; channels-last layout on CUDA, where cuDNN is fastest with it."""
    if device.type == "cuda":
        return x.to(device, non_blocking=True, memory_format=_memory_format(kind))
    return x.to(device)


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, weights: torch.Tensor, device: torch.device, kind: str
) -> dict[str, float]:
    """Class-weighted loss, accuracy and balanced accuracy of ``model`` over ``loader``."""
    model.eval()
    weights = weights.to(device)
    loss_sum, weight_sum = 0.0, 0.0
    truths, predictions = [], []
    for x, y in loader:
        x, y = to_device(x, device, kind), y.to(device)
        with autocast_for(device):
            logits = model(x)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, weight=weights, reduction="sum").item()
        weight_sum += weights[y].sum().item()
        truths.append(y.cpu().numpy())
        predictions.append(logits.argmax(dim=1).cpu().numpy())
    truth, predicted = np.concatenate(truths), np.concatenate(predictions)
    return {
        "loss": loss_sum / weight_sum,
        "accuracy": float(accuracy_score(truth, predicted)),
        "balanced_accuracy": float(balanced_accuracy_score(truth, predicted)),
    }


def _fingerprint(architecture: str, settings: Mapping, seed: int, shape: tuple[int, ...],
                 n_train: int, n_val: int) -> dict[str, Any]:
    return {"architecture": architecture, "settings": dict(settings), "seed": int(seed),
            "shape": list(shape), "n_train": n_train, "n_val": n_val}


def _load_checkpoint(path: Path, fingerprint: Mapping[str, Any]) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it belongs to this exact run, else None (start fresh)."""
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
    return checkpoint


def _plain(value: Any) -> Any:
    """Config values (possibly Snakemake's mapping types) as plain dicts/lists."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def train_image_model(
    manifest_path: str | Path,
    cutout_root: str | Path,
    architecture: str,
    settings: Mapping,
    out_dir: str | Path,
    checkpoint_dir: str | Path,
    seed: int,
    device: str = "auto",
    num_workers: int = 0,
    threads: int | None = None,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
) -> pd.DataFrame:
    """Train ``architecture`` on the manifest's train split, validating on val every epoch.

    Writes ``out_dir/model.pt`` (best-epoch weights and everything :mod:`synapse_ei.inference`
    needs) and ``out_dir/history.csv`` (one row per epoch). ``checkpoint_dir/last.pt`` is
    rewritten after every epoch; if it exists for the same configuration and data, training
    resumes after its epoch. ``on_epoch_end`` receives each epoch's history row (after the
    checkpoint is saved). Returns the history.
    """
    out_dir, checkpoint_path = Path(out_dir), Path(checkpoint_dir) / "last.pt"
    kind = input_kind(architecture)
    if kind not in data.KINDS:
        raise DataError(f"models: {architecture!r} reads {kind}, not images; train it with "
                        "synapse_ei.baseline.")
    settings = resolve_settings(_plain(settings))
    if threads is not None:
        torch.set_num_threads(int(threads))
    torch_device = resolve_device(device)
    if torch_device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its kernels

    train_rows = data.load_manifest(manifest_path, "train", kind)
    val_rows = data.load_manifest(manifest_path, "val", kind)
    root = Path(cutout_root)
    shape = data.stored_shape(root / str(train_rows[f"path_{kind}"].iloc[0]))
    preload = (len(train_rows) + len(val_rows)) * math.prod(shape) <= PRELOAD_MAX_BYTES
    train_set = data.CutoutDataset(
        train_rows, root, kind, data.build_transforms(kind, True, settings["augment_strength"]),
        shape=shape, preload=preload,
    )
    val_set = data.CutoutDataset(val_rows, root, kind, None, shape=shape, preload=preload)
    weights = class_weights(train_set.labels)

    seed_everything(seed)
    batch_size = settings["batch_size"]
    per_epoch = min(settings["samples_per_epoch"] or len(train_set), len(train_set))
    train_loader = data.make_loader(
        train_set, batch_size, seed, shuffle=True, num_workers=num_workers, num_samples=per_epoch,
        # BatchNorm cannot train on a final batch of one sample.
        drop_last=per_epoch % batch_size == 1, pin_memory=torch_device.type == "cuda",
    )
    val_loader = data.make_loader(val_set, batch_size, seed + 1, shuffle=False,
                                  num_workers=num_workers, pin_memory=torch_device.type == "cuda")

    model = build_model(architecture, num_classes=len(LABELS)).to(torch_device)
    if torch_device.type == "cuda":
        model = model.to(memory_format=_memory_format(kind))
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings["learning_rate"],
                                  weight_decay=settings["weight_decay"])
    epochs = settings["epochs"]
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=epochs * len(train_loader)
    )
    criterion = nn.CrossEntropyLoss(weight=weights.to(torch_device))

    history: list[dict[str, Any]] = []
    best_score, best_epoch = -math.inf, 0
    best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    start_epoch = 1
    fingerprint = _fingerprint(architecture, settings, seed, shape, len(train_set), len(val_set))
    checkpoint = _load_checkpoint(checkpoint_path, fingerprint)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        history = list(checkpoint["history"])
        best_score, best_epoch = checkpoint["best_score"], checkpoint["best_epoch"]
        best_state = checkpoint["best_state"]
        _restore_rng(checkpoint["rng"], train_loader.generator)
        start_epoch = checkpoint["epoch"] + 1
        log.info("%s: resuming from %s after epoch %d of %d", architecture, checkpoint_path,
                 checkpoint["epoch"], epochs)
    log.info("%s: %d train (%d per epoch), %d val %s cutouts of shape %s on %s", architecture,
             len(train_set), per_epoch, len(val_set), kind, shape, torch_device)

    for epoch in range(start_epoch, epochs + 1):
        model.train()
        lr = optimizer.param_groups[0]["lr"]
        started = time.perf_counter()
        loss_sum, seen = 0.0, 0
        batches = tqdm(train_loader, desc=f"{architecture} epoch {epoch}/{epochs}", unit="batch",
                       leave=False, disable=not sys.stderr.isatty())
        for batch, (x, y) in enumerate(batches):
            x, y = to_device(x, torch_device, kind), y.to(torch_device)
            with autocast_for(torch_device):
                logits = model(x)
            loss = criterion(logits.float(), y)
            if not torch.isfinite(loss):
                raise RuntimeError(
                    f"{architecture}: loss is {loss.item()} at epoch {epoch}, batch {batch}; "
                    f"stopped. {checkpoint_path} keeps the last good epoch. Lower the "
                    "learning_rate or check the cutouts for corrupt values."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), settings["grad_clip"])
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(y)
            seen += len(y)
        train_seconds = time.perf_counter() - started
        scores = evaluate(model, val_loader, weights, torch_device, kind)
        row = {
            "epoch": epoch,
            "train_loss": loss_sum / max(seen, 1),
            "val_loss": scores["loss"],
            "val_accuracy": scores["accuracy"],
            "val_balanced_accuracy": scores["balanced_accuracy"],
            "lr": lr,
            "seconds": time.perf_counter() - started,
            "samples_per_second": seen / train_seconds if train_seconds > 0 else float("nan"),
        }
        history.append(row)
        if scores["balanced_accuracy"] > best_score:
            best_score, best_epoch = scores["balanced_accuracy"], epoch
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        with atomic_path(checkpoint_path) as tmp:
            torch.save({
                "format": CHECKPOINT_FORMAT,
                "fingerprint": fingerprint,
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "history": history,
                "best_score": best_score,
                "best_epoch": best_epoch,
                "best_state": best_state,
                "rng": _rng_state(train_loader.generator),
            }, tmp)
        log.info(
            "%s epoch %d/%d: train_loss %.4f val_loss %.4f val_acc %.3f val_bacc %.3f lr %.2e "
            "%.1f s (%.1f samples/s)", architecture, epoch, epochs, row["train_loss"],
            row["val_loss"], row["val_accuracy"], row["val_balanced_accuracy"], lr,
            row["seconds"], row["samples_per_second"],
        )
        if on_epoch_end is not None:
            on_epoch_end(row)

    frame = pd.DataFrame(history, columns=HISTORY_COLUMNS)
    with atomic_path(out_dir / "model.pt") as tmp:
        torch.save({
            "architecture": architecture,
            "input_kind": kind,
            "state_dict": best_state,
            "settings": settings,
            "normalisation": {"scale": 255.0, "mean": data.NORM_MEAN, "std": data.NORM_STD},
            "cutout_shape": list(shape),
            "class_names": list(LABELS),
            "best_epoch": best_epoch,
            "best_val_balanced_accuracy": best_score,
            "seed": int(seed),
        }, tmp)
    with atomic_path(out_dir / "history.csv") as tmp:
        frame.to_csv(tmp, index=False)
    log.info("%s: best epoch %d (val balanced accuracy %.3f); wrote %s", architecture,
             best_epoch, best_score, out_dir / "model.pt")
    return frame
