"""The one contract every classifier of this project keeps."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class ModelOutput(NamedTuple):
    """What every model returns.

    logits: B×num_classes class scores before softmax.
    attention: B×h×w map in [0, 1] at the resolution of the feature map it was made from (LFI-CAM's A,
        ABN's M, the plain model's CAM of its predicted class). LFI-CAM's A and the CAM are min-max scaled
        per image, and a flat map (one value up to float rounding, :func:`lficam.core.maps.is_flat`; every 1×1
        map is flat) is reported as zeros: it points nowhere. ABN's M is a sigmoid, in (0, 1) as it is.
    aux_logits: B×num_classes auxiliary scores that take part in the loss (ABN's attention branch), or None.
    """

    logits: Tensor
    attention: Tensor
    aux_logits: Tensor | None = None


def check_images(x: Tensor) -> None:
    """Fail with one sentence when a batch is not B×3×H×W floating point."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"Expected a tensor of images shaped B×3×H×W, got {type(x).__name__}.")
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(
            f"Expected a batch of RGB images shaped B×3×H×W, got shape {tuple(x.shape)}; "
            "add a batch dimension with x.unsqueeze(0) or convert grey images to 3 channels."
        )
    if not x.is_floating_point():
        raise TypeError(
            f"Expected floating-point images (normalised), got dtype {x.dtype}; convert with x.float() "
            "and normalise as the training data was."
        )
