"""Grey uint8 images: the training statistics the Fashion-MNIST modules normalise with, and resizing with
their masks. The splits themselves live in :mod:`lficam.data.in_memory`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def mean_std(images: Tensor) -> tuple[float, float]:
    """Mean and standard deviation of uint8 pixels in [0, 1] units, from their histogram (no float copy).

    μ = Σ_v n_v v / N / 255,  σ² = Σ_v n_v v² / N / 255² − μ².
    """
    counts = torch.bincount(images.reshape(-1), minlength=256).double()
    values = torch.arange(256, dtype=torch.float64) / 255
    total = counts.sum()
    mean = float((counts * values).sum() / total)
    var = float((counts * values**2).sum() / total) - mean**2
    return mean, max(var, 0.0) ** 0.5


def normalisation(
    train_images: Tensor, mean: tuple[float, ...] | None, std: tuple[float, ...] | None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel mean and std to normalise with: the ones given, else the grey training split's
    :func:`mean_std` in all three channels (the channels are copies of one plane)."""
    grey_mean, grey_std = mean_std(train_images)
    return mean or (grey_mean,) * 3, std or (grey_std,) * 3


def resize_grey(images: Tensor, masks: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """uint8 N×h×w images and their masks at size×size: images bilinear (antialiased when shrinking),
    masks resized alike and kept where at least half covered, so they stay on the resized object."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images, masks
    out_images, out_masks = [], []
    for im, mk in zip(images.split(4096), masks.split(4096)):
        # uint8 in, uint8 out: torch's fast path for bytes, rounded like a float resize
        x = F.interpolate(im[:, None], size=(size, size), mode="bilinear", antialias=True)
        m = F.interpolate(mk[:, None].float(), size=(size, size), mode="bilinear", antialias=True)
        out_images.append(x[:, 0])
        out_masks.append(m[:, 0] >= 0.5)
    return torch.cat(out_images), torch.cat(out_masks)
