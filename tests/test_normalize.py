"""The two min-max normalisations of LFI-CAM's forward pass, on hand-made tensors (the min-max of reported
maps is tested in test_maps.py)."""

import torch

from lficam.models.normalize import minmax_channels, minmax_spatial


def test_minmax_channels_hand_case():
    features = torch.tensor(
        [
            [[1.0, 3.0], [5.0, 9.0]],  # ordinary: (x − 1) / 8
            [[2.0, 2.0], [2.0, 2.0]],  # constant: 0/0 → 1
            [[0.0, 0.0], [0.0, 0.0]],  # constant zero: 1, then zeroed where F == 0
            [[-2.0, 0.0], [2.0, 6.0]],  # (x + 2) / 8, then the exact zero set to 0
        ]
    ).unsqueeze(0)
    expected = torch.tensor(
        [
            [[0.0, 0.25], [0.5, 1.0]],
            [[1.0, 1.0], [1.0, 1.0]],
            [[0.0, 0.0], [0.0, 0.0]],
            [[0.0, 0.0], [0.5, 1.0]],
        ]
    ).unsqueeze(0)
    torch.testing.assert_close(minmax_channels(features), expected)


def test_minmax_channels_is_per_sample_and_differentiable():
    features = torch.rand(3, 4, 5, 5, requires_grad=True)
    out = minmax_channels(features)
    flat = out.flatten(2)
    torch.testing.assert_close(flat.amax(2), torch.ones(3, 4))
    torch.testing.assert_close(flat.amin(2), torch.zeros(3, 4))
    out[:, :, 2, 2].sum().backward()
    assert features.grad is not None and features.grad.abs().sum() > 0


def test_minmax_spatial_edge_cases():
    maps = torch.stack(
        [
            torch.tensor([[0.0, 2.0], [4.0, 8.0]]),
            torch.zeros(2, 2),  # all-zero S gives A = 0
            torch.full((2, 2), 3.0),  # constant S is kept as it is
        ]
    ).unsqueeze(1)
    out = minmax_spatial(maps)
    torch.testing.assert_close(out[0, 0], torch.tensor([[0.0, 0.25], [0.5, 1.0]]))
    torch.testing.assert_close(out[1], torch.zeros(1, 2, 2))
    torch.testing.assert_close(out[2], torch.full((1, 2, 2), 3.0))


def test_normalisations_run_in_float32_under_autocast():
    features = torch.rand(2, 3, 4, 4).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert minmax_channels(features).dtype == torch.float32
        assert minmax_spatial(features[:, :1]).dtype == torch.float32
