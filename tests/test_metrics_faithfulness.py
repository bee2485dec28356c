"""Deletion, insertion, Average Drop and Increase in Confidence with a model whose probabilities are linear.

LinearProbability: with S the sum of all pixel values (all channels), logits = (log S, log(K − S)), so
softmax gives p(class 0) = S / K exactly. Every expected number below follows from pixel sums by hand.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from lficam.core.errors import UserError
from lficam.metrics import (
    AverageDrop,
    DeletionAUC,
    IncreaseInConfidence,
    InsertionAUC,
    average_drop,
    deletion_auc,
    deletion_curve,
    gaussian_blur,
    increase_in_confidence,
    insertion_auc,
    insertion_curve,
)
from lficam.models.output import ModelOutput


class LinearProbability(nn.Module):
    def __init__(self, k: float = 160.0, model_output: bool = False) -> None:
        super().__init__()
        self.k, self.model_output = k, model_output

    def forward(self, x: torch.Tensor) -> torch.Tensor | ModelOutput:
        s = x.sum(dim=(1, 2, 3))
        logits = torch.stack([s.log(), (self.k - s).log()], dim=1)
        return ModelOutput(logits, x[:, 0]) if self.model_output else logits


def row_image(values: list[float]) -> torch.Tensor:
    # 1×3×4×4: row r holds values[r] in every pixel and channel, so a row sums to 3·4·values[r] = 12·values[r].
    return torch.tensor(values, dtype=torch.float32).view(1, 1, 4, 1).expand(1, 3, 4, 4).clone()


def row_map(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(1, 4, 1).expand(1, 4, 4).clone()


# Rows 4, 2, 1, 1: row sums 48, 24, 12, 12; S = 96, p = 96/160 = 0.6 (class 0 is predicted).
IMAGE = row_image([4, 2, 1, 1])
GOOD = row_map([3, 2, 1, 0])  # deletes row 0 first, then 1, 2, 3
BAD = row_map([0, 1, 2, 3])  # deletes row 3 first, then 2, 1, 0


def test_deletion_auc_hand_computed():
    # 4 px per step = one row per step, fractions 0, 1/4, 1/2, 3/4, 1.
    # GOOD: S = 96, 48, 24, 12, 0 → p = .6, .3, .15, .075, 0;
    #   AUC = ¼·[(.6+.3) + (.3+.15) + (.15+.075) + (.075+0)]/2 = ¼·1.65/2 = 0.20625.
    # BAD: S = 96, 84, 72, 48, 0 → p = .6, .525, .45, .3, 0; AUC = ¼·3.15/2 = 0.39375.
    images, maps = torch.cat([IMAGE, IMAGE]), torch.cat([GOOD, BAD])
    for batch_size in (1, 3, 1000):  # chunks that cut through an image's steps give the same numbers
        got = deletion_auc(LinearProbability(), images, maps, pixels_per_step=4, batch_size=batch_size)
        assert got.tolist() == pytest.approx([0.20625, 0.39375])
    fractions, curve = deletion_curve(LinearProbability(), IMAGE, GOOD, pixels_per_step=4)
    assert fractions.tolist() == [0, 0.25, 0.5, 0.75, 1]
    assert curve[0].tolist() == pytest.approx([0.6, 0.3, 0.15, 0.075, 0])


def test_deletion_default_step_targets_and_model_output():
    # Default n = ceil(16/224) = 1 px per step (17 points): within a row p falls linearly, so the trapezoid
    # gives the same 0.20625. targets = class 1 has p = 1 − S/160, hence AUC = 1 − 0.20625.
    # A model returning ModelOutput is scored on its logits.
    assert deletion_auc(LinearProbability(), IMAGE, GOOD).item() == pytest.approx(0.20625)
    got = deletion_auc(LinearProbability(model_output=True), IMAGE, GOOD, torch.tensor([1]))
    assert got.item() == pytest.approx(0.79375)


def test_deletion_step_larger_than_the_image_and_flat_map():
    # 100 px per step on a 16 px image: one step deletes everything → points p = .6, 0 → AUC 0.3.
    # A flat map ranks nothing: NaN.
    assert deletion_auc(LinearProbability(), IMAGE, GOOD, pixels_per_step=100).item() == pytest.approx(0.3)
    assert math.isnan(deletion_auc(LinearProbability(), IMAGE, torch.ones(1, 4, 4)).item())


def test_low_resolution_map_is_upsampled_bilinearly():
    # A 2×2 map with rows 1, 0 upsamples to rows 1, .75, .25, 0: the same order as GOOD → 0.20625.
    small = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    assert deletion_auc(LinearProbability(), IMAGE, small, pixels_per_step=4).item() == pytest.approx(0.20625)


def test_gaussian_blur_kernel_11_sigma_5():
    # A unit impulse in a 21×21 image becomes the separable Gaussian: centre g₀², g₀ = 1 / Σ_{k=−5…5} e^{−k²/50};
    # a constant image stays constant (replicated borders, no dark frame).
    g0 = 1 / sum(math.exp(-(k**2) / 50) for k in range(-5, 6))
    impulse = torch.zeros(1, 3, 21, 21)
    impulse[..., 10, 10] = 1
    blurred = gaussian_blur(impulse)
    assert blurred[0, 0, 10, 10].item() == pytest.approx(g0**2, rel=1e-5)
    assert blurred[0, 0, 10, 15].item() == pytest.approx(g0**2 * math.exp(-25 / 50), rel=1e-5)
    assert blurred.sum().item() == pytest.approx(3.0, rel=1e-5)
    assert torch.allclose(gaussian_blur(torch.full((1, 3, 4, 4), 2.5)), torch.full((1, 3, 4, 4), 2.5))


def test_insertion_auc_from_the_blurred_image():
    # Rows are constant, so the blur only mixes rows: blurred row i = Σ_k g_k · column[i + k] with the column
    # 4, 2, 1, 1 replicated beyond its ends (4 above, 1 below). Step s pastes back row s − 1 (4 px per step):
    # S_s = S_blur + Σ_{rows r < s} 12·(x_r − blurred_r), p = S/160, trapezoid with Δ = ¼.
    g = [math.exp(-(k**2) / 50) for k in range(-5, 6)]
    g = [w / sum(g) for w in g]
    column = [4, 2, 1, 1]
    blurred = [sum(g[k + 5] * column[min(max(i + k, 0), 3)] for k in range(-5, 6)) for i in range(4)]
    sums = [12 * sum(blurred)]
    for r in range(4):
        sums.append(sums[-1] + 12 * (column[r] - blurred[r]))
    p = [s / 160 for s in sums]
    expected = 0.25 * sum((a + b) / 2 for a, b in itertools.pairwise(p))
    got = insertion_auc(LinearProbability(), IMAGE, GOOD, pixels_per_step=4)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    _, curve = insertion_curve(LinearProbability(), IMAGE, GOOD, pixels_per_step=4)
    assert curve[0, -1].item() == pytest.approx(0.6)  # everything pasted back: the clean image


def test_average_drop_and_increase_in_confidence_hand_computed():
    # O is scored on x ⊙ s(map) (s: per-image min-max), Y on x; each image keeps its own ratio. Here K = 120.
    # 1) rows 4, 2, 1, 1 (Y = 96/120 = .8), map rows 1, 1, 0, 0 → O = 12·6/120 = .6:
    #    drop = 100·(.8 − .6)/.8 = 25 (not 20: the drop is relative to Y); no increase.
    # 2) rows 4, 2, 1, −1 (Y = 72/120 = .6), map rows 1, 1, 1, 0 → O = 12·7/120 = .7 > Y: drop 0, IC 100.
    # 3) same image, map rows 2, 1, 0, 0 → s = 1, .5, 0, 0 → O = 12·(4 + 1)/120 = .5:
    #    drop = 100·.1/.6 = 16.667.
    # 4) same image, flat map → s = 0 → the all-zero (mean) image, O = 0: drop 100.
    signed = row_image([4, 2, 1, -1])
    images = torch.cat([IMAGE, signed, signed, signed])
    maps = torch.cat(
        [row_map([1, 1, 0, 0]), row_map([1, 1, 1, 0]), row_map([2, 1, 0, 0]), torch.ones(1, 4, 4)]
    )
    model = LinearProbability(k=120)
    assert average_drop(model, images, maps, batch_size=3).tolist() == pytest.approx([25, 0, 100 / 6, 100])
    assert increase_in_confidence(model, images, maps).tolist() == [0, 100, 0, 0]


def test_model_metric_classes_and_mode_restored():
    model = LinearProbability().train()
    deletion, insertion = DeletionAUC(pixels_per_step=4), InsertionAUC(pixels_per_step=4)
    drop, increase = AverageDrop(), IncreaseInConfidence()
    deletion.update(model, torch.cat([IMAGE, IMAGE]), torch.cat([GOOD, BAD]))
    deletion.update(model, IMAGE, torch.ones(1, 4, 4))  # flat: NaN, left out
    assert deletion.compute().item() == pytest.approx((0.20625 + 0.39375) / 2)
    insertion.update(model, IMAGE, GOOD)
    assert 0 < insertion.compute().item() < 1
    drop.update(model, IMAGE, row_map([1, 1, 0, 0]))  # Y = .6, O = 72/160 = .45 → 25
    increase.update(model, IMAGE, row_map([1, 1, 0, 0]))
    assert drop.compute().item() == pytest.approx(25)
    assert increase.compute().item() == 0
    assert model.training  # probed in eval mode, the caller's mode restored
    assert not DeletionAUC.higher_is_better
    assert InsertionAUC.higher_is_better
    assert not AverageDrop.higher_is_better
    assert IncreaseInConfidence.higher_is_better


def test_bad_inputs_get_one_clear_sentence():
    with pytest.raises(UserError, match="floating-point images"):
        deletion_auc(LinearProbability(), IMAGE.long(), GOOD)
    with pytest.raises(UserError, match="pixels_per_step"):
        deletion_auc(LinearProbability(), IMAGE, GOOD, pixels_per_step=0)
    with pytest.raises(UserError, match="same B"):
        average_drop(LinearProbability(), IMAGE, torch.cat([GOOD, GOOD]))
