"""Where the image models run: the device, bf16 autocast, and the channels-last memory
layout cuDNN is fastest with."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch

from synapse_ei.errors import DataError
from synapse_ei.learn import transforms


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


def autocast_for(device: torch.device) -> Any:
    """bf16 autocast on CUDA (tensor cores, no loss scaling needed); a no-op on CPU."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


def memory_format(device: torch.device, kind: str) -> torch.memory_format:
    """The layout of a model or batch of input ``kind`` ('2d': N, C, H, W; '3d': N, C, D, H, W)
    on ``device``: channels-last on CUDA, where cuDNN is fastest with it, else contiguous."""
    if device.type != "cuda":
        return torch.contiguous_format
    return torch.channels_last if kind == "2d" else torch.channels_last_3d


def to_device(
    x: torch.Tensor, device: torch.device, kind: str,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """A loader batch on ``device``, augmented by ``transform`` there if given, scaled and
    normalised (:func:`transforms.to_model_input`), in channels-last layout on CUDA, where cuDNN is
    fastest with it."""
    return transforms.to_model_input(x, device, memory_format(device, kind), transform)
