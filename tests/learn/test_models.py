"""Image models: every architecture trains on its input kind; the one-channel stem is exact."""

from __future__ import annotations

import ast
import copy
import functools
import urllib.error
from pathlib import Path

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm
from torchvision.models import resnet18, resnet50
from torchvision.models.video import mc3_18, r2plus1d_18, r3d_18

from paths import REPO
from synapse_ei.errors import DataError
from synapse_ei.learn.models import (
    ARCHITECTURES,
    build_model,
    input_kind,
    model_options,
    one_channel_stem,
)
from synapse_ei.learn.models.norm import group_count
from synapse_ei.learn.models.pretrained import PUBLISHED_NAMES, weights_url

IMAGE_MODELS = [name for name, kind in ARCHITECTURES.items() if kind != "tables"]


def test_registry_lists_the_required_architectures():
    assert {"cnn2d", "resnet18", "resnet50"} <= {a for a in IMAGE_MODELS if input_kind(a) == "2d"}
    assert {"r3d_18", "mc3_18", "r2plus1d_18", "unet3d"} <= {
        a for a in IMAGE_MODELS if input_kind(a) == "3d"
    }
    assert input_kind("connectivity") == "tables"


def test_unknown_architecture_names_the_known_ones():
    with pytest.raises(DataError, match="r3d_18"):
        input_kind("vgg16")
    with pytest.raises(DataError, match="synapse_ei.connectivity"):
        build_model("connectivity")


def _shape(architecture: str, sections: int = 8) -> tuple[int, ...]:
    # The demo's shapes scaled down: 2D (1, Y, X); 3D (1, Z, Y, X) as the cutout TIFFs store it.
    return (2, 1, 32, 32) if input_kind(architecture) == "2d" else (2, 1, sections, 16, 16)


@functools.cache
def _model(architecture: str, norm: str = "batch") -> torch.nn.Module:
    """One build per model for the tests that only run it (building the big nets takes seconds)."""
    torch.manual_seed(0)
    return build_model(architecture, num_classes=2, norm=norm)


@pytest.fixture(scope="module", autouse=True)
def _free_models():
    yield
    _model.cache_clear()


@pytest.mark.parametrize("architecture", IMAGE_MODELS)
def test_forward_backward_on_configured_shape(architecture):
    model = _model(architecture).train()
    model.zero_grad(set_to_none=True)
    shape = _shape(architecture)
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
        (resnet50, lambda m: ("conv1", m.conv1), (2, 1, 32, 32)),
        (r3d_18, lambda m: ("stem.0", m.stem[0]), (2, 1, 4, 16, 16)),
        (mc3_18, lambda m: ("stem.0", m.stem[0]), (2, 1, 4, 16, 16)),
        (r2plus1d_18, lambda m: ("stem.0", m.stem[0]), (2, 1, 4, 16, 16)),
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


@pytest.mark.parametrize("architecture", IMAGE_MODELS)
def test_group_norm_variant_has_no_batch_norm_left(architecture):
    model = _model(architecture, "group")
    norms = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and not any(isinstance(m, _BatchNorm) for m in model.modules())
    assert all(m.num_channels % m.num_groups == 0 for m in norms)
    # Per-sample normalisation: a sample's output does not depend on the rest of its batch.
    model.eval()
    x = torch.randn(_shape(architecture))
    with torch.no_grad():
        torch.testing.assert_close(model(x)[:1], model(x[:1]), rtol=1e-4, atol=1e-5)


def test_group_count_divides_channels_and_caps_at_32():
    assert [group_count(c) for c in (16, 32, 45, 64, 144, 2048)] == [16, 32, 15, 32, 24, 32]


def test_model_options_reads_norm_and_pretrained_from_a_config_entry():
    assert model_options({"epochs": 3}) == {"norm": "batch", "pretrained": None}
    assert model_options({"norm": "group", "pretrained": "w.pth"}) == {
        "norm": "group", "pretrained": "w.pth"}
    with pytest.raises(DataError, match="'norm'.*batch.*group"):
        model_options({"norm": "layer"})


def _z_per_stage(architecture: str, sections: int) -> list[int]:
    """The z extent of each stage's output for a (2, 1, sections, 16, 16) cube."""
    model = _model(architecture).eval()
    if architecture == "unet3d":
        stages = list(model.stages)
    else:
        stages = [model.stem, model.layer1, model.layer2, model.layer3, model.layer4]
    depths = []
    hooks = [s.register_forward_hook(lambda _m, _i, out: depths.append(out.shape[2]))
             for s in stages]
    try:
        with torch.no_grad():
            assert model(torch.randn(_shape(architecture, sections))).shape == (2, 2)
    finally:
        for hook in hooks:
            hook.remove()
    return depths


@pytest.mark.parametrize(
    ("architecture", "demo", "real_scale"),
    [
        # stem, layer1..4: every section is seen at full resolution before any z stride.
        ("r3d_18", [8, 8, 4, 2, 1], [32, 32, 16, 8, 4]),
        ("r2plus1d_18", [8, 8, 4, 2, 1], [32, 32, 16, 8, 4]),
        ("mc3_18", [8, 8, 8, 8, 8], [32] * 5),
        # UNet3D stages: in-plane pooling first, as the 40 nm sections ask.
        ("unet3d", [8, 8, 8, 4], [32, 32, 32, 16]),
    ],
)
def test_3d_models_see_every_section_before_pooling_z(architecture, demo, real_scale):
    assert _z_per_stage(architecture, sections=8) == demo
    assert _z_per_stage(architecture, sections=32) == real_scale


def test_unet3d_pools_z_only_while_more_than_one_section_is_left():
    assert _z_per_stage("unet3d", sections=2) == [2, 2, 2, 1]
    assert _z_per_stage("unet3d", sections=1) == [1, 1, 1, 1]


# --- pretrained initialisation -------------------------------------------------------------

RESNET18_HUB_FILE = Path("hub", "checkpoints", "resnet18-f37072fd.pth")


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory):
    """A torch home whose hub cache holds a (randomly initialised) torchvision ResNet-18."""
    home = tmp_path_factory.mktemp("torch_home")
    (home / RESNET18_HUB_FILE).parent.mkdir(parents=True)
    torch.manual_seed(1)
    torch.save(resnet18(weights=None).state_dict(), home / RESNET18_HUB_FILE)
    return home


def _assert_loaded(model, source_state, stem, head="fc"):
    state = model.state_dict()
    for key, value in source_state.items():
        if key.startswith(f"{head}."):
            continue
        expected = value.sum(dim=1, keepdim=True) if key == f"{stem}.weight" else value
        torch.testing.assert_close(state[key], expected, msg=key)
    assert state[f"{head}.weight"].shape[0] == 2  # a fresh two-class head


def test_resnet18_loads_a_local_imagenet_file_with_summed_stem_and_fresh_head(torch_home):
    path = torch_home / RESNET18_HUB_FILE
    model = build_model("resnet18", pretrained=str(path))
    _assert_loaded(model, torch.load(path, weights_only=True), stem="conv1")
    assert model.conv1.in_channels == 1


def test_video_model_loads_a_local_kinetics_file(tmp_path):
    torch.manual_seed(2)
    source = mc3_18(weights=None).state_dict()  # 400 Kinetics classes
    torch.save(source, tmp_path / "mc3_18.pth")
    model = build_model("mc3_18", pretrained=str(tmp_path / "mc3_18.pth"))
    _assert_loaded(model, source, stem="stem.0")


def test_group_norm_keeps_the_pretrained_scale_and_shift(torch_home):
    path = torch_home / RESNET18_HUB_FILE
    model = build_model("resnet18", norm="group", pretrained=str(path))
    source = torch.load(path, weights_only=True)
    assert isinstance(model.bn1, torch.nn.GroupNorm)
    torch.testing.assert_close(model.bn1.weight, source["bn1.weight"])
    torch.testing.assert_close(model.layer4[1].bn2.bias, source["layer4.1.bn2.bias"])


def test_published_weights_come_from_the_hub_cache_without_network(torch_home, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    model = build_model("resnet18", pretrained="imagenet")
    _assert_loaded(model, torch.load(torch_home / RESNET18_HUB_FILE, weights_only=True), "conv1")


def test_unreachable_hub_says_to_download_the_file_elsewhere(tmp_path, monkeypatch):
    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(DataError, match="r3d_18-b3b3357e.pth.*set the model's 'pretrained'"):
        build_model("r3d_18", pretrained="kinetics400")


def test_pretrained_errors_name_the_file_and_the_fix(torch_home, tmp_path):
    with pytest.raises(DataError, match=f"missing.pth: .*not found.*{weights_url('resnet50')}"):
        build_model("resnet50", pretrained=str(tmp_path / "missing.pth"))
    # A ResNet-18 file offered to a ResNet-50 or to a video net does not fit.
    with pytest.raises(DataError, match="resnet18-f37072fd.pth: weights do not fit resnet50"):
        build_model("resnet50", pretrained=str(torch_home / RESNET18_HUB_FILE))
    with pytest.raises(DataError, match="do not fit mc3_18 .*missing .*unexpected"):
        build_model("mc3_18", pretrained=str(torch_home / RESNET18_HUB_FILE))
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(DataError, match="junk.pth: unreadable"):
        build_model("resnet18", pretrained=str(tmp_path / "junk.pth"))
    with pytest.raises(DataError, match="'kinetics400'"):
        build_model("r3d_18", pretrained="imagenet")
    for architecture in ("cnn2d", "unet3d"):
        with pytest.raises(DataError, match="no pretrained weights"):
            build_model(architecture, pretrained="imagenet")


def test_group_norm_unet3d_trains_and_reloads_for_inference(tmp_path):
    from training_helpers import write_learnable_cutouts

    from synapse_ei.learn.inference import load_trained, predict_cutouts
    from synapse_ei.learn.train import train_image_model

    manifest = write_learnable_cutouts(tmp_path / "cutouts")
    settings = {"epochs": 1, "batch_size": 4, "samples_per_epoch": 8, "norm": "group"}
    history = train_image_model(manifest, tmp_path / "cutouts", "unet3d", settings,
                                tmp_path / "out", tmp_path / "ckpt", seed=3, device="cpu",
                                threads=1)
    assert history["train_loss"].notna().all()
    # Inference rebuilds the GroupNorm model the weights belong to.
    model, _ = load_trained(tmp_path / "out" / "model.pt")
    assert not any(isinstance(m, _BatchNorm) for m in model.modules())
    predictions = predict_cutouts(tmp_path / "out" / "model.pt", manifest, tmp_path / "cutouts",
                                  ("val",), device="cpu")
    assert len(predictions) == 8 and predictions["prob_inhibitory"].between(0, 1).all()


def test_workflow_knows_the_published_weights_names():
    # common.smk keeps its own copy (the Snakefile must not import torch) to tell files from names.
    common = (REPO / "workflow" / "rules" / "common.smk").read_text()
    line = next(line for line in common.splitlines() if line.startswith("PUBLISHED_NAMES = "))
    names = ast.literal_eval(line.removeprefix("PUBLISHED_NAMES = "))
    assert set(names) == PUBLISHED_NAMES
