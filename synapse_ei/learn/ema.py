"""Exponential moving average (EMA) of a model's weights, buffers included.

After every optimizer step each averaged tensor becomes ``decay * ema + (1 - decay) * current``
(the first update copies the model). Buffers are averaged too, so BatchNorm's running statistics
match the averaged weights instead of the last step's. Validation, the best-epoch weights and the
saved ``model.pt`` use the averaged copy when a model's ``ema_decay`` is set.
"""

from __future__ import annotations

from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from synapse_ei.errors import DataError


def build_ema(model: nn.Module, decay: float) -> AveragedModel:
    """An averaged copy of ``model``; call ``.update_parameters(model)`` after each step.

    The copy lives on ``model``'s device; ``.module`` is the averaged network and
    ``.state_dict()`` also holds the update count, so a checkpoint resumes it exactly.
    """
    if not 0.0 < decay < 1.0:
        raise DataError(f"models: setting 'ema_decay' is {decay!r}; it must be strictly between "
                        "0 and 1 (e.g. 0.999), or left out for no EMA.")
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
