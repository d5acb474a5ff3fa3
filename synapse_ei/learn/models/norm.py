"""Normalisation layers: BatchNorm, or GroupNorm for the small batches large 3D cubes allow.

BatchNorm's statistics come from the batch, so with a handful of 128x128x32 cubes per GPU they
are noisy and training and evaluation disagree; GroupNorm normalises each sample on its own and
behaves the same at any batch size.
"""

from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from synapse_ei.errors import DataError

#: The values of a model's ``norm`` setting.
NORMS = ("batch", "group")
#: The group count of the GroupNorm paper (Wu & He, 2018), robust across widths.
MAX_GROUPS = 32


def check_norm(norm: str) -> str:
    """``norm`` if it is one of :data:`NORMS`, else a :class:`DataError` naming them."""
    if norm not in NORMS:
        raise DataError(f"models: setting 'norm' is {norm!r}; use one of {list(NORMS)}.")
    return norm


def group_count(channels: int) -> int:
    """The largest divisor of ``channels`` up to :data:`MAX_GROUPS` (R(2+1)D's 45 -> 15)."""
    return max(d for d in range(1, min(channels, MAX_GROUPS) + 1) if channels % d == 0)


def norm_layer(norm: str, channels: int, dims: int) -> nn.Module:
    """A BatchNorm{dims}d or a GroupNorm over ``channels``."""
    if check_norm(norm) == "group":
        return nn.GroupNorm(group_count(channels), channels)
    return {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims](channels)


def _group_norm_like(batch_norm: _BatchNorm) -> nn.GroupNorm:
    channels = batch_norm.num_features
    group_norm = nn.GroupNorm(group_count(channels), channels, eps=batch_norm.eps,
                              affine=batch_norm.affine)
    if batch_norm.affine:
        # Keep (pretrained) scale and shift; the running statistics have no GroupNorm use.
        group_norm.weight.data.copy_(batch_norm.weight.data)
        group_norm.bias.data.copy_(batch_norm.bias.data)
    return group_norm


def use_group_norm(model: nn.Module) -> nn.Module:
    """Replace every BatchNorm layer of ``model`` in place by a GroupNorm; return ``model``."""
    for name, child in model.named_children():
        if isinstance(child, _BatchNorm):
            setattr(model, name, _group_norm_like(child))
        else:
            use_group_norm(child)
    return model


def apply_norm(model: nn.Module, norm: str) -> nn.Module:
    """``model`` as built (``norm='batch'``) or with GroupNorm in place of BatchNorm."""
    return use_group_norm(model) if check_norm(norm) == "group" else model
