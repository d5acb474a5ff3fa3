"""Test-time augmentation: the 8 in-plane views of D4, probabilities averaged."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from synapse_ei.errors import DataError
from synapse_ei.learn.inference import predict_cutouts, predict_proba, tta_views


class PixelLinear(nn.Module):
    """Logits from a fixed linear map of every pixel: sees each orientation differently."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(int(np.prod(shape)), 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


class MeanIntensity(nn.Module):
    """Logits from the mean and spread of the whole input: unchanged by any rotation or flip."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        return torch.stack([flat.mean(1), 3 * flat.std(1)], dim=1)


def numpy_d4(array: np.ndarray) -> list[np.ndarray]:
    """The 8 in-plane views of ``array`` (..., H, W), written out independently with numpy."""
    return [
        np.flip(np.rot90(array, turns, axes=(-2, -1)), -1) if mirror
        else np.rot90(array, turns, axes=(-2, -1))
        for mirror, turns in itertools.product((False, True), range(4))
    ]


@pytest.mark.parametrize("shape", [(1, 6, 6), (1, 3, 6, 6)], ids=["2d", "3d"])
def test_d4_averages_the_eight_views(shape):
    x = torch.randn(5, *shape, generator=torch.Generator().manual_seed(1))
    model = PixelLinear(shape).eval()
    with torch.no_grad():
        averaged = predict_proba(model, x, "d4")
        single = predict_proba(model, x, "none")
        views = [torch.from_numpy(view.copy()) for view in numpy_d4(x.numpy())]
        expected = torch.stack([torch.softmax(model(view), 1) for view in views]).mean(0)
    torch.testing.assert_close(averaged, expected)
    assert not torch.allclose(averaged, single)
    # Eight distinct views of a generic input; in 3D every section is turned alike.
    produced = tta_views(x, "d4")
    assert len({view.numpy().tobytes() for view in produced}) == 8
    if len(shape) == 4:
        for view in produced:
            assert any(np.array_equal(view[:, :, 1].numpy(), candidate)
                       for candidate in numpy_d4(x[:, :, 1].numpy()))


def test_an_invariant_model_is_unchanged_by_tta():
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    model = MeanIntensity()
    torch.testing.assert_close(predict_proba(model, x, "d4"), predict_proba(model, x, "none"))
    torch.testing.assert_close(predict_proba(model, x, "d4").sum(1), torch.ones(4))


def test_rectangular_patches_get_the_four_shape_keeping_views():
    x = torch.randn(2, 1, 4, 6)
    views = tta_views(x, "d4")
    assert len(views) == 4 and all(view.shape == x.shape for view in views)
    assert len({view.numpy().tobytes() for view in views}) == 4


def test_unknown_mode_is_named():
    with pytest.raises(DataError, match="evaluate.tta"):
        tta_views(torch.zeros(1, 1, 4, 4), "d8")


def test_predict_cutouts_gives_probabilities_for_val_and_test(cutouts, uninterrupted):
    work, _ = uninterrupted
    root, manifest = cutouts
    predictions = predict_cutouts(work / "out" / "model.pt", manifest, root, device="cpu",
                                  batch_size=5)
    assert list(predictions.columns) == ["id", "pre_pt_root_id", "split", "label",
                                         "prob_inhibitory"]
    assert sorted(predictions["id"]) == list(range(5024, 5040))
    assert predictions["pre_pt_root_id"].dtype == np.int64
    assert predictions["prob_inhibitory"].between(0, 1).all()
    # Deterministic (no augmentation at inference).
    again = predict_cutouts(work / "out" / "model.pt", manifest, root, ("test",), device="cpu")
    merged = predictions.merge(again, on="id")
    np.testing.assert_allclose(merged["prob_inhibitory_x"], merged["prob_inhibitory_y"],
                               rtol=1e-6)
