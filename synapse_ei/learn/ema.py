"""Exponential moving average (EMA) of a model's weights, buffers included.

After every optimizer step each averaged tensor becomes ``decay * ema + (1 - decay) * current``
(the first update copies the model). Buffers are averaged too, so BatchNorm's running statistics
match the averaged weights instead of the last step's. Validation, the best-epoch weights and the
saved ``model.pt`` use the averaged copy when a model's ``ema_decay`` is set.
"""

from __future__ import annotations

from itertools import chain

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from synapse_ei.errors import DataError


class ExponentialMovingAverage(AveragedModel):
    """torch's ``AveragedModel`` with ``get_ema_multi_avg_fn`` and ``use_buffers=True``, whose
    update does not wait for the GPU.

    torch's ``update_parameters`` copies its CPU update count to the device with a blocking
    ``.to(device)`` every call (swa_utils, torch 2.14), so the host waits for the step's kernels
    once per step; the EMA function never reads the count. Here the count is read and advanced on
    the CPU only, and the same EMA function gets the same tensors grouped by device and dtype,
    so the result, the ``state_dict`` and a checkpoint are the same as torch's.
    """

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        averaged = chain(self.module.parameters(), self.module.buffers())
        current = chain(model.parameters(), model.buffers())
        if int(self.n_averaged) == 0:  # a CPU tensor: no device read
            for mine, theirs in zip(averaged, current, strict=True):
                mine.copy_(theirs)
        else:
            groups: dict[tuple, tuple[list, list]] = {}
            for mine, theirs in zip(averaged, current, strict=True):
                group = groups.setdefault((mine.device, mine.dtype), ([], []))
                group[0].append(mine)
                group[1].append(theirs.detach().to(mine.device))
            for mine, theirs in groups.values():
                self.multi_avg_fn(mine, theirs, None)
        self.n_averaged += 1


def build_ema(model: nn.Module, decay: float) -> ExponentialMovingAverage:
    """An averaged copy of ``model``; call ``.update_parameters(model)`` after each step.

    The copy lives on ``model``'s device; ``.module`` is the averaged network and
    ``.state_dict()`` also holds the update count, so a checkpoint resumes it exactly.
    """
    if not 0.0 < decay < 1.0:
        raise DataError(f"models: setting 'ema_decay' is {decay!r}; it must be strictly between "
                        "0 and 1 (e.g. 0.999), or left out for no EMA.")
    return ExponentialMovingAverage(model, multi_avg_fn=get_ema_multi_avg_fn(decay),
                                    use_buffers=True)
