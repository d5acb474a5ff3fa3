"""The weight EMA."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

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


def _train_a_little(model: nn.Module, ema, steps: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        x = torch.randn(8, 3, generator=generator)
        loss = model(x).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ema.update_parameters(model)


def test_ema_is_torchs_averaged_model_with_its_ema_function():
    """The update that does not wait for the GPU computes what torch's ``AveragedModel`` does,
    integer buffers (BatchNorm's batch count) included, and its checkpoint loads into either."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    reference_model = copy.deepcopy(model)
    ours = build_ema(model, decay=0.8)
    theirs = AveragedModel(reference_model, multi_avg_fn=get_ema_multi_avg_fn(0.8),
                           use_buffers=True)
    _train_a_little(model, ours, steps=5, seed=1)
    _train_a_little(reference_model, theirs, steps=5, seed=1)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for key, value in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value, rtol=0, atol=0, msg=key)
    assert int(ours.n_averaged) == 5
    assert int(ours.module[1].num_batches_tracked) == int(theirs.module[1].num_batches_tracked)
    resumed = build_ema(model, decay=0.8)
    resumed.load_state_dict(theirs.state_dict())
    _train_a_little(model, resumed, steps=2, seed=2)
    _train_a_little(reference_model, theirs, steps=2, seed=2)
    torch.testing.assert_close(resumed.module[0].weight, theirs.module[0].weight, rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_the_gpu_the_ema_update_makes_the_host_not_wait():
    """torch's own update copies its CPU count to the GPU with a blocking copy, so the host
    waited for every training step's kernels once per step (``ema_decay`` in
    config/microns.yaml)."""
    model = nn.Sequential(nn.Conv3d(1, 4, 3), nn.BatchNorm3d(4)).cuda()
    ema = build_ema(model, decay=0.999)
    ema.update_parameters(model)  # the first update copies
    model(torch.randn(2, 1, 5, 5, 5, device="cuda"))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            ema.update_parameters(model)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert int(ema.n_averaged) == 4
