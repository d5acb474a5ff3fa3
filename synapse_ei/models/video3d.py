"""3D video models from torchvision (R3D-18, MC3-18, R(2+1)D-18) with a one-channel stem.

Input is (N, 1, D, H, W) with D the cube's z sections (8 in the demo, 32 at real scale). These
nets stride z in their later stages (R3D, R(2+1)D: 8 -> 4 -> 2 -> 1) and finish with adaptive
average pooling, so D = 8 still works; MC3 keeps z through its 2D-only later stages.
"""

from __future__ import annotations

from torch import nn
from torchvision.models import video

from synapse_ei.models.cnn2d import one_channel_stem

VIDEO_FACTORIES = {
    "r3d_18": video.r3d_18,
    "mc3_18": video.mc3_18,
    "r2plus1d_18": video.r2plus1d_18,
}


def build_video3d(architecture: str, num_classes: int = 2) -> nn.Module:
    """A torchvision video ResNet (no pretrained weights) taking one-channel cubes."""
    if architecture not in VIDEO_FACTORIES:
        raise ValueError(
            f"{architecture!r} is not a video model; use one of {list(VIDEO_FACTORIES)}"
        )
    model = VIDEO_FACTORIES[architecture](weights=None, num_classes=num_classes)
    # The stem's first layer is the only one that sees the input channels (R(2+1)D's too).
    model.stem[0] = one_channel_stem(model.stem[0])
    return model
