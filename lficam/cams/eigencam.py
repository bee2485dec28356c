"""Eigen-CAM (Muhammad and Yeasin, IJCNN 2020, arXiv 2008.00299)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lficam.cams.base import CAMMethod


def principal_projection(activation: Tensor) -> Tensor:
    """The activations projected on their first principal component, per image: B×C×h×w → B×h×w (signed).

    X is the Z×C matrix of positions × channels, centred over positions; the projection is X·v₁ = σ₁u₁ with
    v₁ the top right-singular vector. It is computed from the smaller of the Gram matrices (Z×Z or C×C) by a
    batched symmetric eigensolver, which is much cheaper than an SVD of X. The sign of a principal component
    is arbitrary; it is fixed so that the projection correlates positively with the channel mean of A, i.e.
    the map is high where the layer is active (a zero correlation keeps the solver's sign).
    """
    b, c, h, w = activation.shape
    a = activation.float().flatten(2).transpose(1, 2)  # B×Z×C
    centred = a - a.mean(dim=1, keepdim=True)
    if h * w <= c:
        values, vectors = torch.linalg.eigh(centred @ centred.transpose(1, 2))
        projection = vectors[..., -1] * values[..., -1:].clamp_min(0).sqrt()
    else:
        _, vectors = torch.linalg.eigh(centred.transpose(1, 2) @ centred)
        projection = (centred @ vectors[..., -1:]).squeeze(-1)
    agreement = (projection * a.mean(dim=2)).sum(dim=1, keepdim=True)
    sign = torch.where(agreement < 0, -1.0, 1.0)
    return (projection * sign).view(b, h, w)


class EigenCAM(CAMMethod):
    """Eigen-CAM: L = ReLU(±X·v₁), the first principal component of the target layer's activations.

    Class-agnostic (``targets`` is ignored) and gradient-free; the forward pass stops at the target layer.
    The sign is fixed as :func:`principal_projection` says; the ReLU keeps the positive side, as for the
    other CAMs.
    """

    name = "eigencam"

    def compute(self, x: Tensor, targets: Any) -> Tensor:
        return F.relu(principal_projection(self.activations(x, logits=False).activation))
