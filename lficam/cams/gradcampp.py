"""Grad-CAM++ (Chattopadhyay et al., WACV 2018, arXiv 1710.11063)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lficam.cams.gradcam import GradientCAM


class GradCAMPlusPlus(GradientCAM):
    """Grad-CAM++ with the closed form for an exponential output (the paper's eq. 19, as usually implemented).

    With g = ∂y^c/∂A^k_ij:
      a^{kc}_ij = g² / (2g² + Σ_ab A^k_ab · g³)   (0 where the denominator is 0)
      w^c_k     = Σ_ij a^{kc}_ij · ReLU(g)
      L^c       = ReLU(Σ_k w^c_k A^k)
    """

    name = "gradcampp"

    def channel_weights(self, activation: Tensor, gradient: Tensor) -> Tensor:
        g2 = gradient.square()
        denominator = 2 * g2 + activation.sum(dim=(2, 3), keepdim=True) * g2 * gradient
        nonzero = denominator != 0
        alpha = torch.where(
            nonzero, g2 / torch.where(nonzero, denominator, torch.ones_like(denominator)), 0.0
        )
        return (alpha * F.relu(gradient)).sum(dim=(2, 3))
