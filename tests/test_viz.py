"""Pictures of maps: the colour of each value, non-finite values included."""

import matplotlib
import torch

from lficam.core.pictures import colorize, count_nonfinite


def test_colorize_looks_up_the_colour_map_at_each_value():
    maps = torch.tensor([[[0.0, 0.5], [1.0, 2.0]]])
    jet = matplotlib.colormaps["jet"]
    rgb = colorize(maps)
    assert rgb.shape == (1, 3, 2, 2)
    for (row, col), value in {(0, 0): 0.0, (0, 1): 128 / 255, (1, 0): 1.0, (1, 1): 1.0}.items():
        assert torch.allclose(
            rgb[0, :, row, col], torch.tensor(jet(value)[:3], dtype=torch.float32), atol=1e-6
        )


def test_a_non_finite_map_value_is_drawn_as_zero_and_counted():
    maps = torch.zeros(3, 2, 2)
    maps[1, 0, 0] = float("nan")
    maps[2, 1, 1] = float("inf")
    # rounding NaN to an index used to give -2**63 and an IndexError that ended the run after training
    assert torch.equal(colorize(maps), colorize(torch.zeros(3, 2, 2)))
    assert count_nonfinite(maps) == 2
