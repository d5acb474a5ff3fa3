"""Pretrained initialisation of the torchvision models: ImageNet (2D) or Kinetics-400 (3D).

A model's ``pretrained`` setting is either the path of a local file holding the torchvision
state dict (what compute nodes without internet need), or the name of the published weights
(``imagenet``, ``kinetics400``) which torchvision downloads into its hub cache on first use. The
weights are loaded into the RGB model before its stem becomes one-channel (summed kernels) and
without the 1000/400-class head, which stays freshly initialised for our two classes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from torchvision.models import get_weight

from synapse_ei.errors import DataError

#: Architecture -> (name of its published weights in the ``pretrained`` setting, torchvision enum).
PUBLISHED_WEIGHTS: dict[str, tuple[str, str]] = {
    "resnet18": ("imagenet", "ResNet18_Weights.IMAGENET1K_V1"),
    "resnet50": ("imagenet", "ResNet50_Weights.IMAGENET1K_V2"),
    "r3d_18": ("kinetics400", "R3D_18_Weights.KINETICS400_V1"),
    "mc3_18": ("kinetics400", "MC3_18_Weights.KINETICS400_V1"),
    "r2plus1d_18": ("kinetics400", "R2Plus1D_18_Weights.KINETICS400_V1"),
}
#: The values of ``pretrained`` that name published weights rather than a file.
PUBLISHED_NAMES = frozenset(name for name, _ in PUBLISHED_WEIGHTS.values())
#: The classification head of every torchvision model above; never taken from the file.
HEAD = "fc"


def published_weights(architecture: str) -> tuple[str, str]:
    """(setting name, torchvision enum) of ``architecture``'s weights; DataError if it has none."""
    if architecture not in PUBLISHED_WEIGHTS:
        raise DataError(
            f"models: {architecture!r} has no pretrained weights to start from; leave its "
            f"'pretrained' setting out (it applies to {sorted(PUBLISHED_WEIGHTS)})."
        )
    return PUBLISHED_WEIGHTS[architecture]


def weights_url(architecture: str) -> str:
    """Where torchvision publishes ``architecture``'s pretrained weights."""
    return get_weight(published_weights(architecture)[1]).url


def pretrained_state_dict(architecture: str, source: str) -> Mapping[str, torch.Tensor]:
    """The torchvision state dict named by ``source``: a local file, or the published name."""
    name, enum = published_weights(architecture)
    url = get_weight(enum).url
    if source in PUBLISHED_NAMES:
        if source != name:
            raise DataError(
                f"models: {architecture!r} was published with {name!r} weights, not "
                f"{source!r}; set pretrained to {name!r} or to a local file."
            )
        try:
            # Network on first use, then torch's hub cache ($TORCH_HOME/hub/checkpoints).
            return get_weight(enum).get_state_dict(progress=False)
        except (OSError, RuntimeError) as error:  # URLError is an OSError
            raise DataError(
                f"models: could not download the {name} weights of {architecture} from {url} "
                f"({error}). Download that file on a machine with internet access, copy it "
                "here and set the model's 'pretrained' setting to its path."
            ) from error
    path = Path(source)
    if not path.is_file():
        raise DataError(
            f"{path}: pretrained weights file for {architecture} not found (the model's "
            f"'pretrained' setting; relative paths start where snakemake runs). Download "
            f"{url} and point 'pretrained' at it, or set it to {name!r} where the hub is "
            "reachable."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise DataError(
            f"{path}: unreadable weights file ({error}); download {url} again."
        ) from error
    if not isinstance(state, Mapping) or not all(
        isinstance(value, torch.Tensor) for value in state.values()
    ):
        raise DataError(
            f"{path}: not a state dict (a mapping of parameter names to tensors); expected "
            f"torchvision's {architecture} weights as published at {url}."
        )
    return state


def load_backbone(model: nn.Module, state: Mapping[str, torch.Tensor], architecture: str,
                  source: str) -> nn.Module:
    """Copy every weight of ``state`` but the classification head into ``model`` (RGB stem).

    The file must match the architecture exactly, or a :class:`DataError` lists what differs.
    """
    backbone = {key: value for key, value in state.items()
                if not key.startswith(f"{HEAD}.")}
    expected = model.state_dict()
    # Files saved before BatchNorm counted its batches lack num_batches_tracked; BatchNorm copes.
    missing = sorted(k for k in expected if k not in backbone and not k.startswith(f"{HEAD}.")
                     and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in backbone if k not in expected)
    wrong_shape = sorted(k for k in backbone if k in expected
                         and backbone[k].shape != expected[k].shape)
    if missing or unexpected or wrong_shape:
        problems = [f"{what} {keys[:3]}{' ...' if len(keys) > 3 else ''}"
                    for what, keys in (("missing", missing), ("unexpected", unexpected),
                                       ("wrong shape", wrong_shape)) if keys]
        raise DataError(
            f"{source}: weights do not fit {architecture} ({'; '.join(problems)}); use "
            f"torchvision's {architecture} weights, as published at {weights_url(architecture)}."
        )
    model.load_state_dict(backbone, strict=False)
    return model
