"""Min-max normalisations used inside LFI-CAM's forward pass (method.md §1.2, steps 2 and 6).

Pinned to the official code, including its constant-input cases; the min-max of reported and displayed
maps (flat → zeros) is :func:`lficam.core.maps.minmax`.

Both run in float32 even under autocast: a half-precision division of two nearly equal extrema would
turn small activation ranges into noise or infinities.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _float32(t: Tensor) -> Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def minmax_channels(features: Tensor) -> Tensor:
    """N = (F − min F) / (max F − min F) per sample and channel over space (B×C×h×w → B×C×h×w).

    A constant channel gives 1 (the official code's 0/0 → 1); afterwards every position where F is
    exactly 0 is set to 0, so a channel of zeros stays all zeros. Differentiable, nothing detached.
    """
    with torch.autocast(features.device.type, enabled=False):
        f = _float32(features)
        flat = f.flatten(2)
        lo = flat.amin(dim=2, keepdim=True).unsqueeze(-1)
        hi = flat.amax(dim=2, keepdim=True).unsqueeze(-1)
        span = hi - lo
        constant = span == 0
        normalised = (f - lo) / torch.where(constant, torch.ones_like(span), span)
        normalised = torch.where(constant, torch.ones_like(normalised), normalised)
        return torch.where(f == 0, torch.zeros_like(normalised), normalised)


def minmax_spatial(maps: Tensor) -> Tensor:
    """A = (S − min S) / (max S − min S) per sample over all remaining dimensions.

    A constant map is returned unchanged (so an all-zero S gives A = 0, as in the official code), which is
    what the forward pass multiplies the features with; the map a model *reports* is kept in [0, 1] by
    reporting a flat S as zeros (:func:`lficam.core.maps.is_flat`). Computed in float32.
    """
    with torch.autocast(maps.device.type, enabled=False):
        s = _float32(maps)
        flat = s.flatten(1)
        shape = (s.shape[0],) + (1,) * (s.ndim - 1)
        lo = flat.amin(dim=1).view(shape)
        hi = flat.amax(dim=1).view(shape)
        span = hi - lo
        constant = span == 0
        normalised = (s - lo) / torch.where(constant, torch.ones_like(span), span)
        return torch.where(constant, s, normalised)
