"""The weight EMA."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from synapse_ei.errors import DataError
from synapse_ei.learn.ema import build_ema


def test_ema_update_rule_includes_buffers():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = build_ema(model, decay=0.9)
    ema.update_parameters(model)  # the first update copies
    torch.testing.assert_close(ema.module[0].weight, model[0].weight)
    old_weight = model[0].weight.detach().clone()
    old_mean = model[1].running_mean.clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model(torch.randn(8, 3))  # training-mode forward moves BatchNorm's running mean
    assert not torch.equal(model[1].running_mean, old_mean)
    ema.update_parameters(model)
    torch.testing.assert_close(ema.module[0].weight, 0.9 * old_weight + 0.1 * model[0].weight)
    torch.testing.assert_close(ema.module[1].running_mean,
                               0.9 * old_mean + 0.1 * model[1].running_mean)
    with pytest.raises(DataError, match="ema_decay"):
        build_ema(model, decay=1.0)
