"""Predictions of a trained image model on the cutouts of chosen splits (no augmentation)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from synapse_ei import data
from synapse_ei.errors import DataError
from synapse_ei.models import build_model
from synapse_ei.tables import INHIBITORY
from synapse_ei.train import autocast_for, to_device, resolve_device

PREDICTION_COLUMNS = ["id", "pre_pt_root_id", "split", "label", "prob_inhibitory"]


def load_trained(model_path: str | Path, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The model saved by :func:`synapse_ei.train.train_image_model`, in eval mode; its metadata."""
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
    model = build_model(saved["architecture"], num_classes=len(saved["class_names"]))
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
) -> pd.DataFrame:
    """One row per cutout of ``splits``: id, pre_pt_root_id, split, label, prob_inhibitory.

    ``prob_inhibitory`` is the softmax probability of the inhibitory class. Cutouts must have
    the shape the model was trained on (a :class:`DataError` names any file that does not).
    """
    torch_device = resolve_device(device)
    model, meta = load_trained(model_path, str(torch_device))
    norm = meta["normalisation"]
    if (norm["scale"], norm["mean"], norm["std"]) != (255.0, data.NORM_MEAN, data.NORM_STD):
        raise DataError(f"{model_path}: trained with normalisation {norm}, but this code uses "
                        f"x/255, mean {data.NORM_MEAN}, std {data.NORM_STD}; retrain the model.")
    kind = meta["input_kind"]
    rows = data.load_manifest(manifest_path, list(splits), kind)
    dataset = data.CutoutDataset(rows, cutout_root, kind, None, shape=meta["cutout_shape"])
    loader = data.make_loader(dataset, batch_size, seed=0, shuffle=False,
                              pin_memory=torch_device.type == "cuda")
    inhibitory = list(meta["class_names"]).index(INHIBITORY)
    probabilities = []
    for x, _ in loader:
        with autocast_for(torch_device):
            logits = model(to_device(x, torch_device, kind))
        probabilities.append(torch.softmax(logits.float(), dim=1)[:, inhibitory].cpu().numpy())
    predictions = rows[PREDICTION_COLUMNS[:-1]].copy()
    predictions["prob_inhibitory"] = np.concatenate(probabilities).astype(np.float64)
    return predictions.reset_index(drop=True)
