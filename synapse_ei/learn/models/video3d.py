"""3D video models from torchvision (R3D-18, MC3-18, R(2+1)D-18) with a one-channel stem.

Input is (N, 1, D, H, W) with D the cube's z sections (8 in the demo, 32 at real scale). How
each net treats the 40 nm z (checked by tests/learn/test_models.py; D after stem, layer1..4):

- R3D-18 and R(2+1)D-18: D=8 -> 8, 8, 4, 2, 1 and D=32 -> 32, 32, 16, 8, 4. The stem strides
  only in-plane, so the stem and layer1 (five convolutions spanning 3 sections each) see every
  section at full resolution before layer2 starts halving z. Nothing is pooled away before it
  was seen; for D=8 layer4 works on a single section (its z kernels then mostly see padding),
  which costs accuracy little and keeps the Kinetics weights' geometry, so it is left as is.
- MC3-18: 3D convolutions in the stem and layer1 only, then in-plane (2D) stages that keep D.

All three finish with adaptive average pooling, so any D >= 1 works. For a network whose
downsampling follows the anisotropy instead, see :mod:`synapse_ei.learn.models.unet3d`.
"""

from __future__ import annotations

from torch import nn
from torchvision.models import video

from synapse_ei.learn.models.cnn2d import one_channel_stem
from synapse_ei.learn.models.norm import apply_norm
from synapse_ei.learn.models.pretrained import load_backbone, pretrained_state_dict

VIDEO_FACTORIES = {
    "r3d_18": video.r3d_18,
    "mc3_18": video.mc3_18,
    "r2plus1d_18": video.r2plus1d_18,
}


def build_video3d(
    architecture: str, num_classes: int = 2, norm: str = "batch", pretrained: str | None = None
) -> nn.Module:
    """A torchvision video ResNet taking one-channel cubes, optionally Kinetics-initialised.

    ``pretrained`` (a local state-dict file or ``'kinetics400'``, see
    :mod:`synapse_ei.learn.models.pretrained`) fills every layer but the fresh head before the stem
    sums its RGB kernels; ``norm='group'`` swaps every BatchNorm for a GroupNorm.
    """
    if architecture not in VIDEO_FACTORIES:
        raise ValueError(
            f"{architecture!r} is not a video model; use one of {list(VIDEO_FACTORIES)}"
        )
    state = None if pretrained is None else pretrained_state_dict(architecture, pretrained)
    model = VIDEO_FACTORIES[architecture](weights=None, num_classes=num_classes)
    if state is not None:
        load_backbone(model, state, architecture, pretrained)
    # The stem's first layer is the only one that sees the input channels (R(2+1)D's too).
    model.stem[0] = one_channel_stem(model.stem[0])
    return apply_norm(model, norm)
