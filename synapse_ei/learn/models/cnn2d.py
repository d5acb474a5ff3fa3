"""2D image models: a small custom CNN and torchvision ResNets with a one-channel stem."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models import resnet18, resnet50

from synapse_ei.learn.models.norm import apply_norm
from synapse_ei.learn.models.pretrained import load_backbone, pretrained_state_dict


def one_channel_stem(conv: nn.Conv2d | nn.Conv3d) -> nn.Conv2d | nn.Conv3d:
    """A copy of ``conv`` taking one input channel, its kernel the sum over the input channels.

    EM is grey: a grey image repeated as RGB through the original kernel gives exactly the
    summed kernel on the grey image, so pretrained RGB weights keep their meaning.
    """
    if conv.groups != 1:
        raise ValueError(f"one_channel_stem: grouped convolution (groups={conv.groups})")
    stem = type(conv)(
        in_channels=1,
        out_channels=conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    with torch.no_grad():
        stem.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
        if conv.bias is not None:
            stem.bias.copy_(conv.bias)
    return stem.to(device=conv.weight.device, dtype=conv.weight.dtype)


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """Conv-BN-ReLU stages (two blocks then 2x max-pool each), global average pool, dropout, linear.

    Global pooling makes it indifferent to the patch size (any size >= 2**len(widths)).
    """

    def __init__(
        self,
        num_classes: int = 2,
        widths: Sequence[int] = (16, 32, 64, 128),
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 1
        for width in widths:
            layers += [_conv_block(in_channels, width), _conv_block(width, width), nn.MaxPool2d(2)]
            in_channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x)).flatten(1)
        return self.fc(self.dropout(x))


def build_cnn2d(num_classes: int = 2, norm: str = "batch") -> nn.Module:
    """The small custom CNN for (N, 1, H, W) patches."""
    return apply_norm(SmallCNN(num_classes=num_classes), norm)


def build_resnet2d(
    depth: int, num_classes: int = 2, norm: str = "batch", pretrained: str | None = None
) -> nn.Module:
    """torchvision ResNet-18/50 with a one-channel stem, optionally ImageNet-initialised.

    ``pretrained`` (a local state-dict file or ``'imagenet'``, see
    :mod:`synapse_ei.learn.models.pretrained`) fills every layer but the fresh two-class head; the
    stem then sums its RGB kernels. With ``norm='group'`` each BatchNorm becomes a GroupNorm that
    keeps the pretrained scale and shift.
    """
    factories = {18: resnet18, 50: resnet50}
    if depth not in factories:
        raise ValueError(f"ResNet depth {depth} not available; use one of {sorted(factories)}")
    architecture = f"resnet{depth}"
    state = None if pretrained is None else pretrained_state_dict(architecture, pretrained)
    model = factories[depth](weights=None, num_classes=num_classes)
    if state is not None:
        load_backbone(model, state, architecture, pretrained)
    model.conv1 = one_channel_stem(model.conv1)
    return apply_norm(model, norm)
