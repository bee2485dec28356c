"""Min-max normalisations used inside LFI-CAM's forward pass (method.md §1.2, steps 2 and 6).

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

    A constant map is returned unchanged (so an all-zero S gives A = 0, as in the official code); maps are
    computed in float32.
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


#: A map whose range is within this fraction of its magnitude is flat: bilinear upsampling of a constant map
#: leaves ripples of a few float32 ulps (up to ~3e-7 relative), which must not read as a location.
FLAT_TOLERANCE = 1e-6


def is_flat(maps: Tensor) -> Tensor:
    """B booleans: the map has one value everywhere, up to float rounding (max − min ≤ 1e-6 · max |value|)."""
    flat = maps.flatten(1).float()
    hi, lo = flat.amax(dim=1), flat.amin(dim=1)
    return (hi - lo) <= FLAT_TOLERANCE * torch.maximum(hi.abs(), lo.abs())


def minmax_unit(maps: Tensor) -> Tensor:
    """s(L) = (L − min L) / (max L − min L) per sample, always in [0, 1]: a constant map gives zeros.

    This is the s(·) of the post-hoc CAM formulas and of displayed maps, where a flat map (see
    :func:`is_flat`) carries no location and must not look like one.
    """
    with torch.autocast(maps.device.type, enabled=False):
        m = _float32(maps)
        flat = m.flatten(1)
        shape = (m.shape[0],) + (1,) * (m.ndim - 1)
        lo = flat.amin(dim=1).view(shape)
        span = flat.amax(dim=1).view(shape) - lo
        varies = ~is_flat(m).view(shape)
        return torch.where(varies, (m - lo) / torch.where(varies, span, torch.ones_like(span)), 0.0)
