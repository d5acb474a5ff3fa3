"""Image models: every architecture trains on its input kind; the one-channel stem is exact."""

from __future__ import annotations

import copy

import pytest
import torch
from torchvision.models import resnet18
from torchvision.models.video import r3d_18

from synapse_ei.errors import DataError
from synapse_ei.models import ARCHITECTURES, build_model, input_kind, one_channel_stem

IMAGE_MODELS = [name for name, kind in ARCHITECTURES.items() if kind != "tables"]


def test_registry_lists_the_required_architectures():
    assert {"cnn2d", "resnet18", "resnet50"} <= {a for a in IMAGE_MODELS if input_kind(a) == "2d"}
    assert {"r3d_18", "mc3_18", "r2plus1d_18"} <= {
        a for a in IMAGE_MODELS if input_kind(a) == "3d"
    }
    assert input_kind("connectivity") == "tables"


def test_unknown_architecture_names_the_known_ones():
    with pytest.raises(DataError, match="r3d_18"):
        input_kind("vgg16")
    with pytest.raises(DataError, match="baseline"):
        build_model("connectivity")


@pytest.mark.parametrize("architecture", IMAGE_MODELS)
def test_forward_backward_on_configured_shape(architecture):
    torch.manual_seed(0)
    model = build_model(architecture, num_classes=2)
    # The demo's shapes scaled down: 2D (1, Y, X); 3D (1, Z=8, Y, X) as the cutout TIFFs store it.
    shape = (2, 1, 32, 32) if input_kind(architecture) == "2d" else (2, 1, 8, 16, 16)
    logits = model(torch.randn(shape))
    assert logits.shape == (2, 2)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    convs = (torch.nn.Conv2d, torch.nn.Conv3d)
    first_conv = next(m for m in model.modules() if isinstance(m, convs))
    assert first_conv.in_channels == 1


@pytest.mark.parametrize(
    ("factory", "stem", "shape"),
    [
        (resnet18, lambda m: ("conv1", m.conv1), (2, 1, 32, 32)),
        (r3d_18, lambda m: ("stem.0", m.stem[0]), (2, 1, 4, 16, 16)),
    ],
)
def test_one_channel_stem_equals_rgb_model_on_grey_input(factory, stem, shape):
    torch.manual_seed(0)
    rgb = factory(weights=None, num_classes=2).eval()
    grey = copy.deepcopy(rgb)
    name, conv = stem(grey)
    new = one_channel_stem(conv)
    assert type(new) is type(conv) and new.in_channels == 1
    if name == "conv1":
        grey.conv1 = new
    else:
        grey.stem[0] = new
    image = torch.rand(shape)
    with torch.no_grad():
        expected = rgb(image.expand(-1, 3, *shape[2:]))
        got = grey(image)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
