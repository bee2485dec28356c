"""Maps of a model on images: its own attention map or a post-hoc CAM, for the predicted class, at image size."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from lficam import cams
from lficam.metrics.stability import attention_map_fn

OWN = "own"
MapFn = Callable[[Tensor], Tensor]


def map_fn(model: nn.Module, method: str, options: dict[str, Any] | None = None) -> MapFn:
    """images → B×H×W maps in [0, 1] at the images' size, for the class predicted on each image.

    ``own``: the model's own map (LFI-CAM's A, ABN's M, the plain model's CAM) upsampled bilinearly, computed in
    eval mode without side effects (:func:`lficam.metrics.attention_map_fn`); any other name: that post-hoc
    CAM of :mod:`lficam.cams` on the same model (``options``: the method's options, e.g. FAM's reference)."""
    if method == OWN:
        return attention_map_fn(model)
    return cams.create(method, model, **(options or {}))


def maps_of(fn: MapFn, images: Tensor, batch_size: int) -> Tensor:
    """``fn`` over ``images`` in chunks of ``batch_size``, as one float B×H×W tensor."""
    return torch.cat([fn(chunk).float() for chunk in images.split(batch_size)])
