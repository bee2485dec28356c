"""Noisy linear imputation and ROAD on tiny images whose imputed values are solved by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lficam.core.errors import UserError
from lficam.metrics import Road, linear_imputation, noisy_linear_imputation, road


def test_single_pixel_is_the_weighted_mean_of_its_neighbours():
    # Centre of a 3×3 image: 12 at a diagonal neighbour (weight 1/12) and 6 at a direct one (1/6) → 1 + 1 = 2.
    image = torch.zeros(1, 3, 3, 3)
    image[..., 0, 0], image[..., 0, 1] = 12, 6
    removed = torch.zeros(1, 3, 3, dtype=torch.bool)
    removed[0, 1, 1] = True
    filled = linear_imputation(image, removed)
    assert filled[0, :, 1, 1].tolist() == pytest.approx([2, 2, 2])
    assert torch.equal(
        filled[~removed.unsqueeze(1).expand_as(filled)], image[~removed.unsqueeze(1).expand_as(image)]
    )


def test_border_weights_are_renormalised():
    # Column ramp x = c on 4×4. Corner (0, 0): neighbours (0,1)=1 and (1,0)=0 at 1/6, (1,1)=1 at 1/12, weight
    # sum 5/12 → (1/6 + 1/12)/(5/12) = 0.6. Corner (0, 3): (2/6 + 3/6 + 2/12)/(5/12) = 2.4.
    image = torch.arange(4.0).view(1, 1, 1, 4).expand(1, 1, 4, 4).clone()
    removed = torch.zeros(1, 4, 4, dtype=torch.bool)
    removed[0, 0, 0] = removed[0, 0, 3] = True
    filled = linear_imputation(image, removed)
    assert filled[0, 0, 0, 0].item() == pytest.approx(0.6, abs=1e-5)
    assert filled[0, 0, 0, 3].item() == pytest.approx(2.4, abs=1e-5)


def test_coupled_pixels_hand_solved():
    # 4×4 zeros with 12 at (1, 1); remove (0, 0) and (0, 1), which depend on each other:
    #   (5/12)·a = b/6 + 12/12        (corner: two direct, one diagonal neighbour)
    #   (2/3)·b = a/6 + 12/6          (top edge: three direct, two diagonal; (1, 1) is direct)
    # a = 0.4b + 2.4 → (2/3 − 1/15)·b = 2.4 → b = 4, a = 4.
    image = torch.zeros(1, 1, 4, 4)
    image[..., 1, 1] = 12
    removed = torch.zeros(1, 4, 4, dtype=torch.bool)
    removed[0, 0, :2] = True
    filled = linear_imputation(image, removed)
    assert filled[0, 0, 0, :2].tolist() == pytest.approx([4, 4], abs=1e-4)


def test_a_linear_image_is_recovered_exactly_inside():
    # With symmetric weights the neighbour mean of a linear function is its centre value, so an interior
    # hole in 0.5·r − 0.25·c + 1 is filled with the function itself (the unique solution).
    r = torch.arange(8.0).view(8, 1)
    c = torch.arange(8.0).view(1, 8)
    image = (0.5 * r - 0.25 * c + 1).expand(2, 3, 8, 8).clone()
    removed = torch.zeros(2, 8, 8, dtype=torch.bool)
    removed[0, 1:7, 1:7] = True
    removed[1, 2:5, 3:7] = True
    assert torch.allclose(linear_imputation(image, removed), image, atol=1e-4)


def test_matches_a_sparse_direct_solve():
    # The same system assembled explicitly and solved by scipy's sparse LU on random 8×8 images.
    sparse = pytest.importorskip("scipy.sparse")
    linalg = pytest.importorskip("scipy.sparse.linalg")
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(2, 2, 8, 8, generator=generator)
    removed = torch.rand(2, 8, 8, generator=generator) < 0.7
    got = linear_imputation(image, removed, tolerance=1e-7)
    for b in range(2):
        unknown = [(y, x) for y in range(8) for x in range(8) if removed[b, y, x]]
        index = {p: i for i, p in enumerate(unknown)}
        matrix = sparse.lil_matrix((len(unknown), len(unknown)))
        rhs = torch.zeros(len(unknown), 2, dtype=torch.float64)
        for (y, x), i in index.items():
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    yy, xx = y + dy, x + dx
                    if (dy, dx) == (0, 0) or not (0 <= yy < 8 and 0 <= xx < 8):
                        continue
                    w = 1 / 6 if dy == 0 or dx == 0 else 1 / 12
                    matrix[i, i] += w
                    if (yy, xx) in index:
                        matrix[i, index[(yy, xx)]] -= w
                    else:
                        rhs[i] += w * image[b, :, yy, xx].double()
        solution = linalg.spsolve(matrix.tocsc(), rhs.numpy())
        for (y, x), i in index.items():
            assert got[b, :, y, x].tolist() == pytest.approx(solution[i].tolist(), abs=1e-4)


def test_noise_only_on_removed_pixels():
    image = torch.rand(4, 3, 32, 32)
    removed = torch.rand(4, 32, 32) < 0.5
    noisy = noisy_linear_imputation(image, removed, noise=0.01, generator=torch.Generator().manual_seed(1))
    clean = linear_imputation(image, removed)
    keep = ~removed.unsqueeze(1).expand_as(image)
    assert torch.equal(noisy[keep], image[keep])
    assert (noisy - clean)[~keep].std().item() == pytest.approx(0.01, rel=0.1)
    with pytest.raises(UserError, match="every pixel"):
        linear_imputation(image, torch.ones(4, 32, 32, dtype=torch.bool))


class LinearProbability(nn.Module):
    """p(class 0) = S / K with S the sum of all pixel values (softmax of log S, log(K − S))."""

    def __init__(self, k: float = 72.0) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.sum(dim=(1, 2, 3))
        return torch.stack([s.log(), (self.k - s).log()], dim=1)


def test_road_hand_computed():
    # Both images: 4×4 zeros with 12 at (1, 1) in 3 channels: S = 36, p = 0.5. Percentages 1/16 and 2/16
    # remove k = 1 and 2 pixels; ties rank in raster order; no noise.
    # Image A, map peaked at (1, 1) (1 elsewhere):
    #   MoRF removes (1, 1) [then (0, 0)]: every neighbour is 0 → S = 0 → p = 0, 0 → MoRF 0.
    #   LeRF removes (3, 3) [then (3, 2)]: neighbours 0 → S unchanged → p = .5, .5 → LeRF .5. Combined .25.
    # Image B, map 0 at (1, 1) (1 elsewhere):
    #   MoRF k=1 removes (0, 0) → 12·(1/12)/(5/12) = 2.4 per channel → S = 43.2 → p = .6;
    #   k=2 removes (0, 0), (0, 1) → both 4 (see test_coupled_pixels_hand_solved) → S = 60 → p = 5/6.
    #   MoRF = (.6 + 5/6)/2 = 0.716667. LeRF removes (1, 1) first → S = 0 → p = 0, 0. Combined −0.358333.
    image = torch.zeros(1, 3, 4, 4)
    image[..., 1, 1] = 12
    peak = torch.ones(1, 4, 4)
    peak[0, 1, 1] = 2
    hole = torch.ones(1, 4, 4)
    hole[0, 1, 1] = 0
    images, maps = torch.cat([image, image]), torch.cat([peak, hole])
    for batch_size in (1, 5, 100):
        scores = road(
            LinearProbability(), images, maps, percentages=(1 / 16, 2 / 16), noise=0, batch_size=batch_size
        )
        assert scores.morf.tolist() == pytest.approx([0, 0.716667], abs=1e-4)
        assert scores.lerf.tolist() == pytest.approx([0.5, 0], abs=1e-4)
        assert scores.combined.tolist() == pytest.approx([0.25, -0.358333], abs=1e-4)
    assert scores.morf_curve[1].tolist() == pytest.approx([0.6, 5 / 6], abs=1e-4)
    metric = Road(percentages=(1 / 16, 2 / 16), noise=0)
    metric.update(LinearProbability(), images, maps)
    metric.update(LinearProbability(), image, torch.ones(1, 4, 4))  # flat map: NaN, left out
    assert metric.compute()["combined"].item() == pytest.approx((0.25 - 0.358333) / 2, abs=1e-4)


def test_road_default_percentages_seeded_and_flat_map():
    # Default p = 10 … 90 %; with the default noise the value repeats for the same seed. A flat map is NaN.
    torch.manual_seed(0)
    image = torch.rand(1, 3, 8, 8) + 1  # S ≈ 288 < K: probabilities stay defined
    model = LinearProbability(k=1000)
    maps = torch.cat([torch.rand(1, 8, 8), torch.ones(1, 8, 8)])
    first = road(model, torch.cat([image, image]), maps)
    second = road(model, torch.cat([image, image]), maps)
    assert first.percentages.tolist() == pytest.approx([0.1 * i for i in range(1, 10)])
    assert torch.equal(first.combined[:1], second.combined[:1])
    assert math.isnan(first.combined[1].item())
    assert not math.isnan(first.combined[0].item())
