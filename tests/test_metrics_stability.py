"""Map similarity and stability metrics on tiny maps with hand-worked answers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lficam.core.errors import UnknownNameError
from lficam.metrics import (
    EpochStability,
    InputStability,
    MapIoU,
    RankCorrelation,
    map_iou,
    model_randomisation,
    perturbation_stability,
    randomisation_layers,
    rank_correlation,
)
from lficam.metrics.stability import _translate, average_ranks
from lficam.models import create_model

NAN = float("nan")


def ramp() -> torch.Tensor:
    return torch.arange(16.0).view(1, 4, 4)  # 4r + c at row r, column c


def assert_values(got: torch.Tensor, expected: list[float], abs: float = 1e-6) -> None:
    assert got.shape == (len(expected),)
    for g, e in zip(got.tolist(), expected):
        assert (math.isnan(g) and math.isnan(e)) or g == pytest.approx(e, abs=abs), (got, expected)


def test_map_iou_paper_threshold():
    # s(ramp) = v/15 > 100/255 ⇔ v > 5.88 ⇔ v ≥ 6: 10 px. The reversed ramp 15 − v selects v ≤ 9: 10 px.
    # Overlap v ∈ 6…9 (4 px), union all 16 px → 0.25. Identical maps → 1. A flat map against the ramp
    # selects nothing → 0; two flat maps → NaN (nothing to compare).
    a = torch.cat([ramp(), ramp(), torch.ones(1, 4, 4), torch.ones(1, 4, 4)])
    b = torch.cat([15 - ramp(), ramp() * 3 + 1, ramp(), torch.zeros(1, 4, 4)])
    assert_values(map_iou(a, b), [0.25, 1.0, 0.0, NAN])


def test_average_ranks_share_ties():
    # 3, 1, 3, 2 → sorted 1, 2, 3, 3: ranks 3.5, 1, 3.5, 2.
    assert average_ranks(torch.tensor([[3.0, 1, 3, 2]])).tolist() == [[3.5, 1.0, 3.5, 2.0]]


def test_rank_correlation_hand_computed():
    # ramp vs reversed: ρ = −1; ramp vs ramp² (monotone): ρ = 1.
    # ramp vs eight 0s then eight 1s: ranks of b are 4.5 (×8) and 12.5 (×8). Centred ranks of a are
    # −7.5…7.5 with Σ² = 2·(0.25 + 2.25 + … + 56.25) = 340; centred ranks of b are ∓4 with Σ² = 256;
    # Σ products = 4·(32 − (−32)) = 256 → ρ = 256 / √(340·256) = 16/√340 ≈ 0.86772.
    # A flat map has no ranking → NaN.
    halves = torch.cat([torch.zeros(8), torch.ones(8)]).view(1, 4, 4)
    a = torch.cat([ramp(), ramp(), ramp(), torch.ones(1, 4, 4)])
    b = torch.cat([15 - ramp(), ramp() ** 2, halves, ramp()])
    assert_values(rank_correlation(a, b), [-1.0, 1.0, 16 / math.sqrt(340), NAN], abs=1e-5)


def test_similarity_metric_classes():
    iou, rho = MapIoU(), RankCorrelation()
    iou.update(torch.cat([ramp(), ramp()]), torch.cat([15 - ramp(), ramp()]))  # 0.25 and 1
    rho.update(torch.cat([ramp(), torch.ones(1, 4, 4)]), torch.cat([15 - ramp(), ramp()]))  # −1 and NaN
    assert iou.compute().item() == pytest.approx(0.625)
    assert rho.compute().item() == pytest.approx(-1.0)


def test_translate_fills_the_uncovered_border_with_zeros():
    # Down by 1: row 0 becomes 0, rows 1–3 hold old rows 0–2. Left by 2: columns 2–3 become 0.
    down = _translate(ramp(), 1, 0)[0]
    assert down[0].tolist() == [0, 0, 0, 0]
    assert down[1:].tolist() == ramp()[0, :3].tolist()
    left = _translate(ramp(), 0, -2)[0]
    assert left[:, :2].tolist() == ramp()[0, :, 2:].tolist()
    assert left[:, 2:].abs().sum() == 0


def test_equivariant_map_is_perfectly_stable_under_shift_and_flip():
    # Φ(x) = the image's first channel moves exactly with the image: moved back, it equals Φ(x) on the part
    # that stayed in view → IoU 1, ρ 1, sensitivity 0.
    images = torch.rand(2, 3, 8, 8)
    for kind in ("shift", "flip"):
        scores = perturbation_stability(lambda x: x[:, 0], images, kind, shift=2)
        assert_values(scores.iou, [1, 1])
        assert_values(scores.spearman, [1, 1])
        assert_values(scores.max_sensitivity, [0, 0])


def test_fixed_map_under_flip_hand_computed():
    # Φ ignores the image and always returns the ramp M; flipped back, it becomes M'[r, c] = 4r + 3 − c.
    # M selects (≥ 6) row 1 columns 2–3 and rows 2–3; M' selects row 1 columns 0–1 and rows 2–3:
    # overlap 8, union 12 → IoU 2/3. ‖M' − M‖² = 4 rows · (3² + 1² + 1² + 3²) = 80; ‖M‖² = Σ v² = 1240,
    # so the sensitivity is √(80/1240) ≈ 0.25400 (avg = max with one sample).
    images = torch.zeros(1, 3, 4, 4)
    scores = perturbation_stability(lambda x: ramp().expand(x.shape[0], 4, 4), images, "flip")
    assert_values(scores.iou, [2 / 3])
    assert_values(scores.avg_sensitivity, [math.sqrt(80 / 1240)])
    assert_values(scores.max_sensitivity, [math.sqrt(80 / 1240)])
    # Each row of M' ranks columns the other way: ρ(M, M') is below 1 but positive (rows dominate).
    assert 0 < scores.spearman.item() < 1


def test_noise_sensitivity_is_relative_change():
    # Φ(x) = x[:, 0] on an all-ones 32×32 image: ‖Φ(x)‖ = 32 and ‖Φ(x + δ) − Φ(x)‖ = ‖δ₀‖ ≈ 0.1 · 32,
    # so the relative change is ≈ 0.1 (χ with 1024 degrees of freedom: within a few percent).
    images = torch.ones(1, 3, 32, 32)
    scores = perturbation_stability(lambda x: x[:, 0], images, "noise", noise_std=0.1, samples=4)
    assert scores.avg_sensitivity.item() == pytest.approx(0.1, rel=0.08)
    assert scores.max_sensitivity.item() >= scores.avg_sensitivity.item()
    again = perturbation_stability(lambda x: x[:, 0], images, "noise", noise_std=0.1, samples=4)
    assert torch.equal(again.max_sensitivity, scores.max_sensitivity)  # seeded
    with pytest.raises(UnknownNameError, match="perturbation"):
        perturbation_stability(lambda x: x[:, 0], images, "rotate")


def test_input_stability_metric():
    metric = InputStability("flip")
    metric.update(lambda x: ramp().expand(x.shape[0], 4, 4), torch.zeros(2, 3, 4, 4))
    values = metric.compute()
    assert values["iou"].item() == pytest.approx(2 / 3)
    assert values["max_sensitivity"].item() == pytest.approx(math.sqrt(80 / 1240))


def test_epoch_stability_compares_with_the_previous_epoch():
    stability = EpochStability()
    probe = torch.cat([ramp(), 15 - ramp()])
    stability.update(probe)  # first epoch: nothing to compare with
    assert math.isnan(stability.compute()["iou"].item())
    stability.reset()
    stability.update(probe)  # unchanged maps: IoU 1, ρ 1
    assert stability.compute()["iou"].item() == pytest.approx(1.0)
    assert stability.compute()["spearman"].item() == pytest.approx(1.0)
    stability.reset()  # keeps the previous maps
    stability.update(probe.flip(0))  # each map swapped with its reverse: IoU 0.25, ρ −1
    assert stability.compute()["iou"].item() == pytest.approx(0.25)
    assert stability.compute()["spearman"].item() == pytest.approx(-1.0)


class TopAndBottom(nn.Module):
    """The map is a 1×1 convolution of the image (bottom layer); the top layer only makes the logits."""

    def __init__(self) -> None:
        super().__init__()
        self.bottom = nn.Conv2d(3, 1, 1)
        self.top = nn.Linear(1, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = self.bottom(x)[:, 0]
        return self.top(maps.mean(dim=(1, 2))[:, None]), maps


def test_model_randomisation_cascades_top_down():
    torch.manual_seed(0)
    model = TopAndBottom()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.rand(3, 3, 6, 6)
    results = model_randomisation(model, images)
    assert list(results) == ["top", "bottom"]  # the top (last registered) first
    # Randomising the top layer cannot change a map made below it: ρ = 1 exactly.
    assert_values(results["top"], [1, 1, 1])
    # Then the bottom layer: new channel weights rank the pixels differently.
    assert (results["bottom"] < 0.999).all()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # a copy was randomised


def test_randomisation_layers_of_project_models():
    model = create_model("cifar_resnet20", num_classes=3)
    assert randomisation_layers(model) == [
        "fc",
        "fin",
        "backbone.stages.2",
        "backbone.stages.1",
        "backbone.stages.0",
        "backbone.stem",
    ]
    with pytest.raises(UnknownNameError, match="layer"):
        model_randomisation(model, torch.rand(1, 3, 16, 16), layers=["nope"])


def test_randomisation_reaches_densenets_final_batch_norm():
    # DenseNet's final BN-ReLU is applied after the attention reweighting, between the last block and the
    # head: a cascade that skipped it would leave a learned layer in place below the head.
    model = create_model("cifar_densenet100", num_classes=3)
    layers = randomisation_layers(model)
    assert layers[:3] == ["fc", "fin", "backbone.post"]
    assert layers[3:] == [f"backbone.stages.{i}" for i in reversed(range(len(model.backbone.stages)))] + [
        "backbone.stem"
    ]
