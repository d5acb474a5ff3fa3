"""A 3D U-Net encoder with a classification head, downsampling as the anisotropic EM allows.

The encoder is the contracting path of a 3D U-Net (Çiçek et al., 2016): stages of two
conv3x3x3-norm-ReLU blocks, max-pooling between stages, channels doubling. A global average
pool and a linear layer on the deepest features replace the decoder.

EM sections are 40 nm apart while mip-0 voxels are 8 nm in-plane (5:1). Pooling z by 2 from the
start would merge sections before the network could compare them and leave z ever coarser than
xy. So the first ``in_plane_pools`` poolings are in-plane only, (1, 2, 2): at 8x8x40 nm, two of
them bring xy to 32 nm, close to the 40 nm z. The later poolings are isotropic, (2, 2, 2), but
only while z > 1 section; once one section is left they stay in-plane. Every convolution spans
three sections, so z is seen from the first layer on. For D=8: z runs 8, 8, 8, 4 over the four
default stages; for D=32: 32, 32, 32, 16.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from synapse_ei.learn.models.norm import norm_layer

#: In-plane-only poolings before z is pooled too: log2(40 nm / 8 nm), rounded down.
IN_PLANE_POOLS = 2


def double_conv(in_channels: int, out_channels: int, norm: str) -> nn.Sequential:
    """Two conv3x3x3-norm-ReLU blocks, the unit of a U-Net stage."""
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        norm_layer(norm, out_channels, dims=3),
        nn.ReLU(inplace=True),
        nn.Conv3d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
        norm_layer(norm, out_channels, dims=3),
        nn.ReLU(inplace=True),
    )


class UNet3DClassifier(nn.Module):
    """U-Net encoder stages, global average pool, dropout, linear head; (N, 1, D, H, W) input.

    Works for any D >= 1 and H, W >= 2 ** (len(widths) - 1).
    """

    def __init__(
        self,
        num_classes: int = 2,
        widths: Sequence[int] = (32, 64, 128, 256),
        in_plane_pools: int = IN_PLANE_POOLS,
        norm: str = "batch",
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        channels = [1, *widths]
        self.stages = nn.ModuleList(
            double_conv(c_in, c_out, norm) for c_in, c_out in zip(channels, channels[1:])
        )
        self.in_plane_pools = in_plane_pools
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels[-1], num_classes)

    def pool_kernel(self, index: int, depth: int) -> tuple[int, int, int]:
        """The (z, y, x) max-pool before stage ``index`` (>= 1) of an input ``depth`` deep."""
        pool_z = index > self.in_plane_pools and depth > 1
        return (2 if pool_z else 1, 2, 2)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The deepest stage's feature map."""
        for index, stage in enumerate(self.stages):
            if index:
                x = F.max_pool3d(x, self.pool_kernel(index, x.shape[2]))
            x = stage(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x)).flatten(1)
        return self.fc(self.dropout(x))


def build_unet3d(num_classes: int = 2, norm: str = "batch") -> nn.Module:
    """The UNet3D encoder-classifier for (N, 1, D, H, W) cubes."""
    return UNet3DClassifier(num_classes=num_classes, norm=norm)
