"""lficam.core.maps, the ground floor of every map: upsampling, min-max, flat maps, logits and target classes."""

import pytest
import torch

from lficam.core.errors import UserError
from lficam.core.maps import at_image_size, is_flat, logits_of, minmax, target_classes, upsample
from lficam.models.output import ModelOutput


def test_upsample_is_bilinear_with_pixel_centres_aligned():
    maps = torch.tensor([[[0.0, 4.0], [8.0, 12.0]]], dtype=torch.float64)
    up = upsample(maps, (4, 4))
    assert up.dtype == torch.float32
    # align_corners=False: output pixel x samples the input at (x + 0.5)/2 − 0.5, clamped at the border
    row = [0.0, 1.0, 3.0, 4.0]
    expected = torch.tensor([[v + 8 * w for v in row] for w in (0.0, 0.25, 0.75, 1.0)])
    torch.testing.assert_close(up[0], expected)
    same = torch.rand(2, 5, 7)
    assert torch.equal(upsample(same, (5, 7)), same)  # already at that size: nothing resampled


def test_at_image_size_checks_shapes_in_one_sentence():
    images = torch.zeros(2, 3, 8, 8)
    assert at_image_size(images, torch.rand(2, 2, 2)).shape == (2, 8, 8)
    with pytest.raises(UserError, match="same B"):
        at_image_size(images, torch.rand(3, 2, 2))
    with pytest.raises(UserError, match=r"maps\[:, 0\]"):
        at_image_size(images, torch.rand(2, 1, 2, 2))
    with pytest.raises(UserError, match="floating-point images"):
        at_image_size(images.long(), torch.rand(2, 2, 2))


def test_flat_maps_zero_constant_one_pixel_and_upsampling_ripples():
    ripples = upsample(torch.full((1, 1, 1), 3.7), (16, 16))
    maps = [torch.zeros(1, 3, 3), torch.full((1, 3, 3), -2.5), torch.tensor([[[0.7]]]), ripples]
    assert [bool(is_flat(m)) for m in maps] == [True, True, True, True]
    assert not is_flat(torch.tensor([[[1.0, 1.0 + 1e-4]]]))  # a real, if small, difference counts


def test_minmax_hand_case_and_flat_maps_give_zeros():
    maps = torch.stack([torch.tensor([[-1.0, 1.0], [0.0, 3.0]]), torch.full((2, 2), 5.0)])
    out = minmax(maps)
    torch.testing.assert_close(out[0], torch.tensor([[0.0, 0.5], [0.25, 1.0]]))
    assert torch.equal(out[1], torch.zeros(2, 2))
    assert torch.equal(minmax(upsample(torch.full((2, 1, 1), 3.7), (16, 16))), torch.zeros(2, 16, 16))
    assert minmax(torch.tensor([[[1.0, 1.0 + 1e-4]]])).tolist() == [[[0.0, 1.0]]]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert minmax(maps.bfloat16()).dtype == torch.float32


def test_logits_of_every_output_form():
    logits = torch.randn(2, 5)
    attention = torch.rand(2, 3, 3)
    for output in (logits, ModelOutput(logits, attention), (logits, attention), [logits]):
        assert logits_of(output) is logits
    with pytest.raises(UserError, match="expected logits shaped B×classes"):
        logits_of({"logits": logits})
    with pytest.raises(UserError, match=r"got shape \(2, 5, 1\)"):
        logits_of(logits[..., None])


def test_target_classes_predicted_one_or_one_per_image():
    logits = torch.tensor([[0.1, 2.0, 0.3], [5.0, 0.0, 1.0]])
    assert target_classes(logits).tolist() == [1, 0]
    assert target_classes(logits, 2).tolist() == [2, 2]
    assert target_classes(logits, [0, 2]).tolist() == [0, 2]
    with pytest.raises(UserError, match="one class per image"):
        target_classes(logits, [0, 1, 2])
    with pytest.raises(UserError, match="0…2"):
        target_classes(logits, [0, 3])
    with pytest.raises(UserError, match="integer class indices"):
        target_classes(logits, torch.tensor([0.0, 1.0]))
