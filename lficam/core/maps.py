"""The ground floor for attention maps: upsampling, min-max scaling, flat maps, and what a map explains.

Models, CAM methods, metrics, pictures, the training module and evaluation all take these from here; this
module imports nothing of lficam but its errors, so every floor above can use it.

Conventions: a map is B×h×w (at its feature map's resolution) or B×H×W (at the image's size). Up, the
papers' upsampling to the input size, is bilinear interpolation with ``align_corners=False`` (pixel centres
aligned, as a map is a pooled grid), in float32. s(·), the papers' min-max, scales each image's map into
[0, 1]; a flat map carries no location and scales to zeros.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lficam.core.errors import UserError

#: A map whose range is within this fraction of its magnitude is flat: bilinear upsampling of a constant map
#: leaves ripples of a few float32 ulps (up to ~3e-7 relative), which must not read as a location.
FLAT_TOLERANCE = 1e-6


def upsample(maps: Tensor, size: Sequence[int]) -> Tensor:
    """Up: B×h×w → float32 B×H×W, bilinear with align_corners=False; maps already H×W are only made float32."""
    maps = maps.float()
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps.unsqueeze(1), size=tuple(size), mode="bilinear", align_corners=False).squeeze(1)


def check_maps(maps: Tensor, name: str = "maps") -> None:
    """One sentence unless ``maps`` is a B×H×W tensor."""
    if not isinstance(maps, Tensor) or maps.ndim != 3:
        shape = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
        raise UserError(
            f"Expected {name} shaped B×H×W, got {shape}; squeeze a channel axis with {name}[:, 0]."
        )


def at_image_size(images: Tensor, maps: Tensor) -> Tensor:
    """Maps as float32 B×H×W at the images' size (:func:`upsample`), after checking that they fit the images."""
    check_maps(maps)
    if not isinstance(images, Tensor) or images.ndim != 4 or maps.shape[0] != images.shape[0]:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise UserError(
            f"Expected images B×3×H×W and maps B×h×w with the same B, got {shape} and {tuple(maps.shape)}."
        )
    if not images.is_floating_point():
        raise UserError(
            f"Expected floating-point images in the model's normalised input space, got {images.dtype}."
        )
    return upsample(maps, images.shape[-2:])


def is_flat(maps: Tensor) -> Tensor:
    """B booleans: the map has one value everywhere, up to float rounding.

    flat ⇔ max − min ≤ 1e-6 · max(|max|, |min|), so an all-zero map, a constant map and any 1×1 map are
    flat, and so is a constant map after bilinear upsampling.
    """
    values = maps.flatten(1).float()
    hi, lo = values.amax(dim=1), values.amin(dim=1)
    return (hi - lo) <= FLAT_TOLERANCE * torch.maximum(hi.abs(), lo.abs())


def minmax(maps: Tensor) -> Tensor:
    """s(L) = (L − min L) / (max L − min L) per image, in float32 and always in [0, 1]; a flat map gives zeros.

    Autocast is switched off: a half-precision division of two nearly equal extrema turns small ranges into
    noise or infinities.
    """
    with torch.autocast(maps.device.type, enabled=False):
        m = maps.float()
        values = m.flatten(1)
        shape = (m.shape[0],) + (1,) * (m.ndim - 1)
        lo = values.amin(dim=1).view(shape)
        span = values.amax(dim=1).view(shape) - lo
        varies = ~is_flat(m).view(shape)
        return torch.where(varies, (m - lo) / torch.where(varies, span, torch.ones_like(span)), 0.0)


def logits_of(output: Any) -> Tensor:
    """Class scores (B×classes) from a model's output: plain logits, a ``ModelOutput`` (``.logits``) or a
    tuple whose first item is the logits."""
    if isinstance(output, Tensor):
        logits = output
    elif hasattr(output, "logits"):
        logits = output.logits
    elif isinstance(output, Sequence) and output and isinstance(output[0], Tensor):
        logits = output[0]
    else:
        raise UserError(
            f"The model returned {type(output).__name__}; expected logits shaped B×classes, a ModelOutput "
            "or a tuple whose first item is the logits."
        )
    if logits.ndim != 2:
        raise UserError(f"Expected logits shaped B×classes from the model, got shape {tuple(logits.shape)}.")
    return logits


def target_classes(logits: Tensor, targets: Tensor | int | Sequence[int] | None = None) -> Tensor:
    """The class each map explains, as a LongTensor of B on the logits' device.

    targets: None (the class predicted from ``logits``), one class for the whole batch, or one per image.
    """
    batch, classes = logits.shape
    if targets is None:
        return logits.detach().argmax(dim=1)
    indices = torch.as_tensor(targets, device=logits.device)
    if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
        raise UserError(f"targets must be integer class indices, got dtype {indices.dtype}.")
    # gather saves its index for backward, which an inference-mode tensor cannot be.
    indices = indices.long().reshape(-1).clone()
    if indices.numel() == 1 and batch > 1:
        indices = indices.expand(batch)
    if indices.numel() != batch:
        raise UserError(
            f"Got {indices.numel()} targets for a batch of {batch} images: give one class per image."
        )
    if indices.numel() and (indices.min() < 0 or indices.max() >= classes):
        raise UserError(
            f"targets must lie in 0…{classes - 1} (the model has {classes} classes), got {indices.tolist()}."
        )
    return indices
