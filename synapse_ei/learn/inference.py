"""Predictions of a trained image model on the cutouts of chosen splits, with test-time
augmentation (TTA).

The in-plane orientation of a synapse in a section is arbitrary, so by default every batch is
also seen in the other 7 orientations of the dihedral group D4 (rotations by 90 degrees, each
with and without a mirror) applied to the H, W axes: of a 2D patch, or of every section of a 3D
cube alike (z is never flipped: it is the cutting axis, with its own resolution). The softmax
probabilities of the views are averaged.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from synapse_ei.errors import DataError
from synapse_ei.learn.dataset import CutoutDataset, load_manifest, make_loader
from synapse_ei.learn.device import autocast_for, memory_format, resolve_device, to_device
from synapse_ei.learn.models import build_model, model_options
from synapse_ei.learn.transforms import NORM_MEAN, NORM_STD
from synapse_ei.tables import EXCITATORY, INHIBITORY, PREDICTION_COLUMNS

#: Test-time augmentation modes: 'd4', the 8 in-plane flips and rotations; 'none', one view.
TTA_MODES = ("d4", "none")


def tta_views(x: torch.Tensor, mode: str = "d4") -> list[torch.Tensor]:
    """The views of a batch ``x`` (..., H, W) that ``mode`` averages over.

    'd4' gives the 8 elements of D4 on the last two axes when H == W; a rectangular patch is
    mapped onto itself only by the 4 that keep its shape (identity, both mirrors, the half
    turn), so it gets those. 'none' gives ``x`` alone.
    """
    if mode not in TTA_MODES:
        raise DataError(f"evaluate.tta: unknown mode {mode!r}; use one of {list(TTA_MODES)}.")
    if mode == "none":
        return [x]
    axes = (-2, -1)
    if x.shape[-2] != x.shape[-1]:
        return [x, x.flip(-1), x.flip(-2), x.rot90(2, axes)]
    turns = [x.rot90(k, axes) for k in range(4)]
    return turns + [view.flip(-1) for view in turns]


def predict_proba(model: nn.Module, x: torch.Tensor, mode: str = "d4") -> torch.Tensor:
    """Class probabilities (batch, classes) of ``model`` on ``x``, averaged over the views of
    :func:`tta_views`. ``x`` is already on the model's device."""
    total = None
    views = tta_views(x, mode)
    # The flips and turns keep the layout to_device chose only after this.
    layout = memory_format(x.device, "2d" if x.dim() == 4 else "3d")
    for view in views:
        with autocast_for(x.device):
            logits = model(view.contiguous(memory_format=layout))
        probabilities = torch.softmax(logits.float(), dim=1)
        total = probabilities if total is None else total + probabilities
    return total / len(views)


def load_trained(model_path: str | Path, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The model saved by :func:`synapse_ei.learn.train.train_image_model`, in eval mode; its
    metadata."""
    model_path = Path(model_path)
    if not model_path.is_file():
        raise DataError(f"{model_path}: trained model not found; run the train stage first.")
    try:
        saved = torch.load(model_path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise DataError(
            f"{model_path}: unreadable model file ({error}); rerun training."
        ) from error
    missing = [key for key in ("architecture", "state_dict", "cutout_shape", "normalisation",
                               "class_names") if key not in saved]
    if missing:
        raise DataError(f"{model_path}: not a synapse-ei model file (missing {missing}); rerun "
                        "training.")
    # The trained weights replace any pretrained ones: build with the same norm, load nothing.
    norm = model_options(saved.get("settings"))["norm"]
    model = build_model(saved["architecture"], num_classes=len(saved["class_names"]), norm=norm)
    model.load_state_dict(saved["state_dict"])
    model.to(resolve_device(device)).eval()
    meta = {key: value for key, value in saved.items() if key != "state_dict"}
    return model, meta


@torch.no_grad()
def predict_cutouts(
    model_path: str | Path,
    manifest_path: str | Path,
    cutout_root: str | Path,
    splits: Sequence[str] = ("val", "test"),
    device: str = "auto",
    batch_size: int = 64,
    tta: str = "d4",
) -> pd.DataFrame:
    """One row per cutout of ``splits``: id, pre_pt_root_id, split, label, prob_inhibitory.

    ``prob_inhibitory`` is the softmax probability of the inhibitory class, averaged over the
    test-time augmentation views of ``tta`` (see :func:`tta_views`). Cutouts must have the
    shape the model was trained on (a :class:`DataError` names any file that does not).
    """
    if tta not in TTA_MODES:
        raise DataError(f"evaluate.tta: unknown mode {tta!r}; use one of {list(TTA_MODES)}.")
    torch_device = resolve_device(device)
    model, meta = load_trained(model_path, str(torch_device))
    rows = load_manifest(manifest_path, list(splits), meta["input_kind"])
    probabilities = _predict_rows(model, meta, model_path, rows, cutout_root, torch_device,
                                  batch_size, tta)
    predictions = rows[PREDICTION_COLUMNS[:-1]].copy()
    predictions["prob_inhibitory"] = probabilities
    return predictions.reset_index(drop=True)


@torch.no_grad()
def predict_unlabelled_cutouts(
    model_path: str | Path,
    manifest: pd.DataFrame,
    cutout_root: str | Path,
    device: str = "auto",
    batch_size: int = 64,
    tta: str = "d4",
) -> np.ndarray:
    """The probability of inhibitory of every row of a cutout ``manifest`` without labels (its
    ``path_<kind>`` relative to ``cutout_root``), as :func:`predict_cutouts` computes it."""
    if tta not in TTA_MODES:
        raise DataError(f"evaluate.tta: unknown mode {tta!r}; use one of {list(TTA_MODES)}.")
    torch_device = resolve_device(device)
    model, meta = load_trained(model_path, str(torch_device))
    # CutoutDataset yields (image, label) pairs; these synapses have no label, and the one it
    # is given here is never read.
    rows = manifest.assign(label=EXCITATORY)
    return _predict_rows(model, meta, model_path, rows, cutout_root, torch_device, batch_size,
                         tta)


def _predict_rows(
    model: nn.Module,
    meta: dict[str, Any],
    model_path: str | Path,
    rows: pd.DataFrame,
    cutout_root: str | Path,
    torch_device: torch.device,
    batch_size: int,
    tta: str,
) -> np.ndarray:
    """Probability of inhibitory of each manifest row, in order, averaged over TTA views."""
    norm = meta["normalisation"]
    if (norm["scale"], norm["mean"], norm["std"]) != (255.0, NORM_MEAN, NORM_STD):
        raise DataError(f"{model_path}: trained with normalisation {norm}, but this code uses "
                        f"x/255, mean {NORM_MEAN}, std {NORM_STD}; retrain the model.")
    kind = meta["input_kind"]
    dataset = CutoutDataset(rows, cutout_root, kind, None, shape=meta["cutout_shape"])
    loader = make_loader(dataset, batch_size, seed=0, shuffle=False,
                              pin_memory=torch_device.type == "cuda")
    inhibitory = list(meta["class_names"]).index(INHIBITORY)
    probabilities = []
    for x, _ in loader:
        averaged = predict_proba(model, to_device(x, torch_device, kind), tta)
        probabilities.append(averaged[:, inhibitory].cpu().numpy())
    return np.concatenate(probabilities).astype(np.float64)
