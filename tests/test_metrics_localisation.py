"""Localisation metrics on 4×4 maps whose answers are worked out by hand in the comments."""

from __future__ import annotations

import math

import pytest
import torch

from lficam.core.errors import UserError
from lficam.metrics import (
    EnergyPointingGame,
    MaskIoU,
    PointingGame,
    energy_pointing_game,
    mask_iou,
    pointing_game,
)

NAN = float("nan")


def ramp() -> torch.Tensor:
    # 1×4×4 map with values 0…15 in raster order: row r, column c holds 4r + c.
    return torch.arange(16.0).view(1, 4, 4)


def rows(*indices: int) -> torch.Tensor:
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, list(indices)] = True
    return mask


def assert_values(got: torch.Tensor, expected: list[float]) -> None:
    assert got.shape == (len(expected),)
    for g, e in zip(got.tolist(), expected):
        assert (math.isnan(g) and math.isnan(e)) or g == pytest.approx(e, abs=1e-6), (got, expected)


def test_pointing_game_hit_miss_flat_and_empty():
    # Peak of the ramp is (3, 3). Mask row 3 contains it: hit. Mask row 0 is 3 rows away: a miss with
    # tolerance 1, a hit with tolerance 3. A flat map is a miss although its first maximum (0, 0) lies in
    # row 0. An empty mask is NaN, never a hit.
    maps = torch.cat([ramp(), ramp(), ramp(), torch.ones(1, 4, 4), ramp()])
    masks = torch.cat([rows(3), rows(0), rows(0), rows(0), torch.zeros(1, 4, 4, dtype=torch.bool)])
    assert_values(pointing_game(maps, masks, tolerance=1), [1, 0, 0, 0, NAN])
    assert_values(pointing_game(maps[2:3], masks[2:3], tolerance=3), [1])


def test_energy_pointing_game_hand_computed():
    # Map: diagonal 1, 2, 3, 4 (mass 10); the mask is the top-left 2×2 block holding 1 + 2 = 3 → 0.3.
    # A −5 elsewhere is clipped to 0 and changes nothing.
    diagonal = torch.diag(torch.tensor([1.0, 2, 3, 4])).unsqueeze(0)
    diagonal[0, 0, 3] = -5
    block = torch.zeros(1, 4, 4, dtype=torch.bool)
    block[0, :2, :2] = True
    # Flat positive map: mass spread evenly, so the 4-pixel block holds 4/16 = 0.25 (not a hit).
    # All-zero map: no mass → NaN. Empty mask → NaN.
    maps = torch.cat([diagonal, torch.full((1, 4, 4), 7.0), torch.zeros(1, 4, 4), diagonal])
    masks = torch.cat([block, block, block, torch.zeros(1, 4, 4, dtype=torch.bool)])
    assert_values(energy_pointing_game(maps, masks), [0.3, 0.25, NAN, NAN])


def test_energy_is_per_image_never_a_ratio_over_the_batch():
    # Image 0: 0.3 as above. Image 1: mass 100 on each of its 4 masked pixels and nothing else → 1.0.
    # A ratio over the batch would give (3 + 400) / (10 + 400) ≈ 0.983 for both.
    diagonal = torch.diag(torch.tensor([1.0, 2, 3, 4])).unsqueeze(0)
    block = torch.zeros(1, 4, 4, dtype=torch.bool)
    block[0, :2, :2] = True
    maps = torch.cat([diagonal, 100 * block.float()])
    assert_values(energy_pointing_game(maps, torch.cat([block, block])), [0.3, 1.0])


def test_mask_iou_relative_threshold():
    # s(ramp) = v / 15 > 0.5 ⇔ v ≥ 8: rows 2 and 3 (8 px). Mask rows 1–2 (8 px): overlap row 2 (4 px),
    # union rows 1–3 (12 px) → 1/3. Mask row 3 inside the binary map: 4 / 8 = 0.5.
    maps = torch.cat([ramp(), ramp()])
    assert_values(mask_iou(maps, torch.cat([rows(1, 2), rows(3)])), [1 / 3, 0.5])
    # The threshold is relative to the map's range: ramp·10 + 3 binarises the same way.
    assert_values(mask_iou(ramp() * 10 + 3, rows(1, 2)), [1 / 3])


def test_mask_iou_flat_map_and_empty_mask():
    # A flat map selects nothing: IoU 0 against a non-empty mask, never a hit; an empty mask is NaN.
    maps = torch.cat([torch.ones(1, 4, 4), ramp()])
    masks = torch.cat([rows(0, 1, 2, 3), torch.zeros(1, 4, 4, dtype=torch.bool)])
    assert_values(mask_iou(maps, masks), [0.0, NAN])


def test_mask_iou_top_k_never_larger_than_the_image():
    # top 25 % of the ramp = the 4 largest values = row 3 → IoU 1 with mask row 3.
    # top 100 % = all 16 px against 4 px → 0.25. top 99.9 % rounds to 16 px, never more than the image.
    # A tiny fraction still keeps one pixel, (3, 3): IoU with row 3 = 1/4.
    maps = torch.cat([ramp()] * 4)
    masks = torch.cat([rows(3)] * 4)
    assert_values(mask_iou(maps[:1], masks[:1], top_k=0.25), [1.0])
    assert_values(mask_iou(maps[:1], masks[:1], top_k=1.0), [0.25])
    assert_values(mask_iou(maps[:1], masks[:1], top_k=0.999), [0.25])
    assert_values(mask_iou(maps[:1], masks[:1], top_k=1e-6), [0.25])
    with pytest.raises(UserError, match="top_k"):
        mask_iou(maps, masks, top_k=2.0)


def test_metric_classes_average_images_and_skip_nan():
    # Batch 1: energies 0.3 and NaN (empty mask); batch 2: 1.0 → mean over valid images (0.3 + 1.0) / 2.
    diagonal = torch.diag(torch.tensor([1.0, 2, 3, 4])).unsqueeze(0)
    block = torch.zeros(1, 4, 4, dtype=torch.bool)
    block[0, :2, :2] = True
    metric = EnergyPointingGame()
    assert math.isnan(metric.compute().item())
    metric.update(torch.cat([diagonal, diagonal]), torch.cat([block, torch.zeros_like(block)]))
    metric.update(100 * block.float(), block)
    assert metric.compute().item() == pytest.approx(0.65)
    assert EnergyPointingGame.higher_is_better
    assert MaskIoU.higher_is_better


def test_sum_states_merge_like_ddp_ranks():
    # Two "ranks" each see one image; the merged metric equals one metric that saw both: (1/3 + 0.5) / 2.
    rank0, rank1, single = MaskIoU(), MaskIoU(), MaskIoU()
    rank0.update(ramp(), rows(1, 2))
    rank1.update(ramp(), rows(3))
    single.update(torch.cat([ramp(), ramp()]), torch.cat([rows(1, 2), rows(3)]))
    rank0.merge_state(rank1)
    assert rank0.compute().item() == pytest.approx(single.compute().item()) == pytest.approx(5 / 12)


def test_pointing_game_class_averages_per_class():
    # Class 0: hit, miss → 0.5; class 1: hit → 1.0; class average 0.75 (image average would be 2/3).
    maps = torch.cat([ramp()] * 3)
    masks = torch.cat([rows(3), rows(0), rows(3)])
    metric = PointingGame(num_classes=2, tolerance_at_224=56)  # 56 · 4 / 224 = 1 px
    metric.update(maps, masks, torch.tensor([0, 0, 1]))
    assert metric.compute().item() == pytest.approx(0.75)


# Images without an object: counted in one warning where the localisation metrics are aggregated


@pytest.fixture
def fresh_reports(monkeypatch):
    """An empty record of the empty-mask warnings already given (they are given once per process)."""
    import lficam.metrics.localisation as localisation

    monkeypatch.setattr(localisation, "_reported", set())


def _empty_mask_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "have an empty mask" in r.getMessage()]


def _with_empty(count: int, total: int) -> torch.Tensor:
    """``total`` masks of rows 3, the first ``count`` of them all-zero."""
    masks = torch.cat([rows(3)] * total)
    masks[:count] = False
    return masks


def test_pointing_game_counts_the_images_it_leaves_out_in_one_warning(caplog, fresh_reports):
    import logging

    metric = PointingGame(num_classes=2, stage="val")
    with caplog.at_level(logging.WARNING, logger="lficam"):
        metric.update(torch.cat([ramp()] * 5), _with_empty(2, 5), torch.tensor([0, 1, 0, 1, 0]))
        metric.update(torch.cat([ramp()] * 3), _with_empty(1, 3), torch.tensor([1, 1, 0]))
        assert metric.compute().item() == pytest.approx(1.0)  # the five images with an object: all hits
        metric.compute()  # the next epoch's same count: not said again
    assert _empty_mask_warnings(caplog) == [
        "3 of the 8 val images scored by the localisation metrics have an empty mask (no object: an all-zero "
        "mask file, boxes outside the image, or no mask or box file) and were left out of the pointing game, "
        "energy pointing game and mask IoU."
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lficam"):
        quiet = PointingGame(num_classes=2)  # no stage: a caller that reports by itself
        quiet.update(ramp(), torch.zeros(1, 4, 4, dtype=torch.bool), torch.tensor([0]))
        assert math.isnan(quiet.compute().item())
        alone = PointingGame(num_classes=2, stage="test")
        alone.update(ramp(), torch.zeros(1, 4, 4, dtype=torch.bool), torch.tensor([0]))
        assert math.isnan(alone.compute().item())
    assert _empty_mask_warnings(caplog) == [
        "1 of the 1 test images scored by the localisation metrics have an empty mask (no object: an all-zero "
        "mask file, boxes outside the image, or no mask or box file) and were left out of the pointing game, "
        "energy pointing game and mask IoU; every image was, so these metrics are NaN."
    ]


def test_training_diagnostics_warn_with_the_count_of_images_without_an_object(caplog, fresh_reports):
    import logging

    from lficam.training.diagnostics import AttentionDiagnostics

    diagnostics = AttentionDiagnostics(2, input_stability=(), stability_probe_size=0)
    batch = {
        "image": torch.zeros(6, 3, 4, 4),
        "label": torch.tensor([0, 1, 0, 1, 0, 1]),
        "mask": _with_empty(4, 6),
    }
    maps = torch.cat([ramp()] * 6)
    with caplog.at_level(logging.WARNING, logger="lficam"):
        # Lightning's sanity check: two batches, not the epoch, so its count is not reported
        logged = diagnostics.update("val", batch, maps, lambda x: None, epoch=0, sanity_checking=True)
        logged.compute()
        assert _empty_mask_warnings(caplog) == []
        diagnostics.reset("val")
        logged = diagnostics.update("test", batch, maps, lambda x: None, epoch=0)
        values = {name: metric.compute() for name, metric in logged.items()}
    assert values["test/attn/pointing_game"].item() == pytest.approx(1.0)
    assert [m.split(" images ")[0] for m in _empty_mask_warnings(caplog)] == ["4 of the 6 test"]
