"""Pointing game on maps whose answers are worked out by hand."""

import math

import torch

from lficam.metrics import PointingGame, pointing_game


def test_pointing_game_hand_cases():
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[0, 0] = True  # the object is the top-left pixel
    peak_on = torch.zeros(4, 4)
    peak_on[0, 0] = 1.0
    peak_far = torch.zeros(4, 4)
    peak_far[3, 3] = 1.0  # distance to (0,0) is 3√2 ≈ 4.24
    flat = torch.full((4, 4), 0.3)
    maps = torch.stack([peak_on, peak_far, peak_far, flat, peak_on])
    masks = torch.stack([mask, mask, mask, mask, torch.zeros(4, 4, dtype=torch.bool)])
    hits = pointing_game(maps, masks, tolerance=4.0)
    assert hits[:4].tolist() == [1.0, 0.0, 0.0, 0.0]  # flat map: a miss, never a hit
    assert math.isnan(hits[4])  # empty mask: undefined
    assert pointing_game(maps[1:2], masks[1:2], tolerance=4.25).tolist() == [1.0]


def test_pointing_game_metric_averages_over_classes():
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, 1, 1] = True
    hit = torch.zeros(1, 4, 4)
    hit[0, 1, 1] = 1
    miss = torch.zeros(1, 4, 4)
    miss[0, 3, 3] = 1
    metric = PointingGame(num_classes=3, tolerance_at_224=0.0)
    # class 0: 3 hits of 3; class 1: 0 of 1 → mean over classes 0.5 (the per-image mean would be 0.75)
    for m, label in [(hit, 0), (hit, 0), (hit, 0), (miss, 1)]:
        metric.update(m, mask, torch.tensor([label]))
    assert metric.compute().item() == 0.5


def test_an_upsampled_constant_map_is_flat_not_a_guess():
    # A ResNet-50 at 32 px makes 1×1 maps; bilinear upsampling leaves float ripples of a few ulps
    # (here up to ~1e-7 relative) that an exact max == min test would read as a location.
    tiny = torch.full((4, 1, 1, 1), 3.7e-4)
    maps = torch.nn.functional.interpolate(tiny, size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    masks = torch.zeros(4, 32, 32, dtype=torch.bool)
    masks[:, 20:24, 20:24] = True
    assert pointing_game(maps, masks, tolerance=2.0).tolist() == [0.0, 0.0, 0.0, 0.0]
